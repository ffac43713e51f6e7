"""Width samplers for slimmable networks: which per-layer widths to train next.

A slimmable network shares one set of weights among many sub-networks, each given by a vector of
per-layer width multipliers x in [lower, 1]^D. Each training step visits a few, picked by:

* `UniformSampler`: one multiplier for every layer (the "Slim" / US-Nets baseline).
* `RandomSampler`: an independent multiplier per layer (the AutoSlim / two-stage supernet).
* `JoslimSampler`: Joslim (Chin, Morcos, Marculescu, "Joslim: Joint Widths and Weights
  Optimization for Slimmable Neural Networks", ECML-PKDD 2021, arXiv 2007.11752). It keeps
  a history of configurations whose losses the trainer re-measures every window, fits a Gaussian
  process (GP) to loss(x), and proposes the configuration that most improves the cost-vs-loss Pareto
  front at a random target cost, so training concentrates on the front whose area it minimizes.

"The reference" below is the authors' released code, which also fits a GP to the cost and bisects
the weight of a Tchebyshev scalarization until the winner's cost is within 0.02 of the target. Here
the cost is exact and cheap, so it gets no GP, the candidate is moved exactly onto the target cost,
and the default acquisition is expected improvement (`acquisition='ucb'`: the reference's scheme).

Everything is NumPy: an exact GP with an ARD Matern-5/2 kernel whose hyperparameters maximize the
log marginal likelihood (Rasmussen & Williams, "Gaussian Processes for Machine Learning", 2006,
Ch. 2 and Eq. 5.9), a closed-form expected improvement (Jones et al. 1998), and Pareto helpers.

Example (a toy cost; the trainer passes the MACs ratio of a real network):

    import numpy as np
    from sampler import JoslimSampler, area_under_front
    weights = np.linspace(1.0, 3.0, 8)
    cost = lambda x: (x ** 2 @ weights) / weights.sum()           # full network costs 1.0
    loss = lambda x: (np.exp(-3 * x) @ weights[::-1]) / weights.sum()
    sampler = JoslimSampler(num_dims=8, lower=0.42, cost_fn=cost, seed=0)
    for window in range(30):
        sampler.observe(loss(sampler.history_configs()))         # re-score the whole history
        widths = sampler.propose(2)                               # train these for one window
    seen = sampler.history_configs()
    print(area_under_front(cost(seen), loss(seen), cost(0.42 * np.ones((1, 8)))[0], 1.0))
"""
import math

import numpy as np

SQRT5 = math.sqrt(5.0)


# ---------------------------------------------------------------- normal distribution, EI

def _erfcx(x):
    """Scaled complementary error function exp(x^2) erfc(x) for x >= 0, to 2e-12 relative (the
    worst just below 2.5, where the series hands over to the continued fraction)."""
    x = np.asarray(x, dtype=float)
    out, small = np.empty_like(x), x < 2.5
    # Below 2.5: erf(x) = 2/sqrt(pi) exp(-x^2) sum_n (2x^2)^n x / (1*3*...*(2n+1)) (A&S 7.1.6);
    # every term is positive, so the sum has no cancellation; 45 terms reach machine precision.
    xs = term = series = x[small]
    for n in range(1, 45):
        term = term * (2.0 * xs * xs) / (2 * n + 1)
        series = series + term
    out[small] = np.exp(xs * xs) - 2.0 / math.sqrt(math.pi) * series
    # Above 2.5: Laplace's continued fraction erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x +
    # (3/2)/(x + ...)))), evaluated bottom-up; 40 levels converge to machine precision there.
    xl = fraction = x[~small]
    for k in range(40, 0, -1):
        fraction = xl + (k / 2.0) / fraction
    out[~small] = 1.0 / (math.sqrt(math.pi) * fraction)
    return out


def normal_cdf(z):
    """Standard normal CDF Phi(z), vectorized, accurate in both tails (absolute error ~1e-15)."""
    z = np.asarray(z, dtype=float)
    u = np.abs(z) / math.sqrt(2.0)
    upper_tail = 0.5 * _erfcx(u) * np.exp(-u * u)          # = 1 - Phi(|z|), relative accuracy kept
    return np.where(z < 0, upper_tail, 1.0 - upper_tail)


def expected_improvement(mean, std, best):
    """E[max(best - f, 0)] for f ~ N(mean, std^2): how much a point is expected to beat `best`
    when MINIMIZING. Closed form (best - mean) Phi(z) + std phi(z), z = (best - mean) / std; equals
    max(best - mean, 0) where std == 0; always finite and >= 0. Arrays broadcast; same shape out."""
    mean, std, best = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (mean, std, best)))
    shape, mean, std = mean.shape, mean.reshape(-1), std.reshape(-1)
    improvement = best.reshape(-1) - mean
    result, has_std = np.maximum(improvement, 0.0), std > 0
    z = improvement[has_std] / std[has_std]
    pdf, unit, right = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi), np.empty_like(z), z >= 0
    unit[right] = z[right] * normal_cdf(z[right]) + pdf[right]
    # For z < 0, z Phi(z) + phi(z) cancels; factor out phi(z) and use erfcx to keep relative accuracy.
    zl = z[~right]
    unit[~right] = pdf[~right] * (1.0 + zl * math.sqrt(math.pi / 2.0) * _erfcx(-zl / math.sqrt(2.0)))
    result[has_std] = std[has_std] * np.maximum(unit, 0.0)
    return result.reshape(shape)


# ---------------------------------------------------------------- Gaussian process

class CholeskyFactor:
    """Lower Cholesky factor L of a symmetric positive-definite (n, n) matrix K, built by appending
    block rows of 64, each a triangular solve against the rows above plus a 64x64 Cholesky, so
    conditioning on new points costs O(n^2), not O(n^3). Not np.linalg.cholesky/solve: NumPy has no
    triangular solver, and OpenBLAS's threaded LAPACK stalls 10-100x when a trainer shares the
    cores, while matrix products and 64x64 LAPACK calls do not."""

    def __init__(self, matrix):
        """Factor `matrix`; on failure retry with growing diagonal jitter (near-duplicate inputs)."""
        scale = np.mean(np.diag(matrix))
        for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2):
            self.lower, self.blocks = np.zeros((0, 0)), []   # blocks: (start, stop, diagonal block^-1)
            try:
                return self.grow(np.zeros((0, len(matrix))), matrix + jitter * scale * np.eye(len(matrix)))
            except np.linalg.LinAlgError:
                continue
        raise np.linalg.LinAlgError("kernel matrix is not positive definite even with 1% jitter")

    def grow(self, cross, corner):
        """Turn the factor of A (n, n) into that of [[A, cross], [cross^T, corner]], cross (n, k)."""
        n, k = len(self.lower), len(corner)
        self.lower = np.pad(self.lower, ((0, k), (0, k)))
        column = np.vstack([cross, corner])                # new columns of the grown matrix
        for start in range(0, k, 64):
            stop = min(start + 64, k)
            rows = slice(n + start, n + stop)
            left = self.solve_lower(column[:n + start, start:stop]).T
            diagonal = np.linalg.cholesky(corner[start:stop, start:stop] - left @ left.T)
            self.lower[rows, :n + start], self.lower[rows, rows] = left, diagonal
            self.blocks.append((n + start, n + stop, np.linalg.inv(diagonal)))

    def solve_lower(self, rhs):
        """L^-1 rhs by blocked forward substitution."""
        solution = np.empty_like(rhs, dtype=float)
        for start, stop, inverse in self.blocks:
            solution[start:stop] = inverse @ (rhs[start:stop] - self.lower[start:stop, :start] @ solution[:start])
        return solution

    def solve(self, vector):
        """K^-1 vector = L^-T (L^-1 vector) for a vector (n,), the L^-T by blocked back substitution."""
        rhs = self.solve_lower(vector[:, None])
        solution = np.empty_like(rhs, dtype=float)
        for start, stop, inverse in reversed(self.blocks):
            solution[start:stop] = inverse.T @ (rhs[start:stop] - self.lower[stop:, start:stop].T @ solution[stop:])
        return solution[:, 0]

    def log_density(self, y, alpha):
        """log N(y; 0, K) given alpha = K^-1 y (R&W Eq. 2.30), with log det K = 2 sum log diag L."""
        half_log_determinant = float(np.log(np.diag(self.lower)).sum())
        return -0.5 * y @ alpha - half_log_determinant - 0.5 * len(y) * math.log(2.0 * math.pi)


class GaussianProcess:
    """Exact GP regression, zero prior mean, ARD Matern-5/2 kernel plus Gaussian observation noise:

        k(x, x') = s (1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r),  r^2 = sum_d (x_d - x'_d)^2 / l_d^2.

    Inputs X are (n, D), targets y (n,). Hyperparameters live in log space: log_params = [log l_1..l_D,
    log s, log noise_variance]. The bounds assume inputs scaled to about the unit cube and
    standardized targets (callers do both)."""

    LOG_BOUNDS_LENGTHSCALE = (math.log(0.05), math.log(100.0))
    LOG_BOUNDS_SIGNAL = (math.log(0.01), math.log(100.0))
    LOG_BOUNDS_NOISE = (math.log(1e-4), math.log(10.0))        # the reference clamps noise >= 1e-4

    def __init__(self, lengthscales, signal_variance=1.0, noise_variance=0.1):
        self.log_params = np.concatenate([np.log(np.atleast_1d(np.asarray(lengthscales, float))),
                                          [math.log(signal_variance), math.log(noise_variance)]])
        self.X = self.y = self.cholesky = self.alpha = None

    lengthscales = property(lambda self: np.exp(self.log_params[:-2]))
    signal_variance = property(lambda self: float(np.exp(self.log_params[-2])))
    noise_variance = property(lambda self: float(np.exp(self.log_params[-1])))

    @staticmethod
    def _matern(X1, X2, lengthscales, signal):
        """Scaled distances r, exp(-sqrt(5) r) and the kernel, each (n, m), for X1 (n, D), X2 (m, D)."""
        A, B = X1 / lengthscales, X2 / lengthscales
        r = np.sqrt(np.maximum((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T, 0.0))
        decay = np.exp(-SQRT5 * r)
        return r, decay, signal * (1.0 + SQRT5 * r + (5.0 / 3.0) * r * r) * decay

    def kernel(self, X1, X2):
        return self._matern(X1, X2, self.lengthscales, self.signal_variance)[2]

    def _lml_and_grad(self, log_params, X, y):
        """Log marginal likelihood and its gradient in log-hyperparameters (R&W Eq. 2.30, 5.9):
        dLML/dtheta_j = 1/2 tr((alpha alpha^T - K^-1) dK/dtheta_j)."""
        n = len(y)
        lengthscales, signal, noise = np.exp(log_params[:-2]), math.exp(log_params[-2]), math.exp(log_params[-1])
        r, decay, signal_kernel = self._matern(X, X, lengthscales, signal)
        factor = CholeskyFactor(signal_kernel + noise * np.eye(n))
        alpha = factor.solve(y)
        inverse_cholesky = factor.solve_lower(np.eye(n))        # K^-1 = L^-T L^-1, needed by the trace
        W = np.outer(alpha, alpha) - inverse_cholesky.T @ inverse_cholesky
        # dk/dlog(l_d) = s (5/3)(1 + sqrt5 r) exp(-sqrt5 r) (x_d - x'_d)^2 / l_d^2: r cancels, so no
        # 0/0 at r = 0, and sum_ij M_ij (z_id - z_jd)^2 = 2 sum_i z_id^2 (M 1)_i - 2 (z^T M z)_dd.
        M = W * (signal * (5.0 / 3.0) * (1.0 + SQRT5 * r) * decay)
        Z = X / lengthscales
        grad_lengthscales = (Z * Z).T @ M.sum(1) - (Z * (M @ Z)).sum(0)
        grad_signal, grad_noise = 0.5 * (W * signal_kernel).sum(), 0.5 * noise * np.trace(W)
        return factor.log_density(y, alpha), np.concatenate([grad_lengthscales, [grad_signal, grad_noise]])

    def fit(self, X, y, optimize=True, iterations=50, learning_rate=0.05, subset_size=None, rng=None):
        """Condition on (X, y); with optimize=True first maximize the log marginal likelihood by Adam
        (Kingma & Ba 2015) in log space, warm-started from the current hyperparameters, keeping the
        best point seen, so the likelihood of the fitted data never ends below its starting value.
        With subset_size the hyperparameters are fitted on a random subset of that size (O(m^3) per
        step instead of O(n^3)); the GP is then conditioned on all points."""
        X, y = np.asarray(X, float), np.asarray(y, float)
        if optimize and iterations > 0:
            fit_X, fit_y = X, y
            if subset_size is not None and len(y) > subset_size:
                chosen = (rng or np.random.default_rng(0)).choice(len(y), subset_size, replace=False)
                fit_X, fit_y = X[chosen], y[chosen]
            low, high = np.array([self.LOG_BOUNDS_LENGTHSCALE] * (len(self.log_params) - 2)
                                 + [self.LOG_BOUNDS_SIGNAL, self.LOG_BOUNDS_NOISE]).T
            params = np.clip(self.log_params, low, high)
            best_value, best_params = -np.inf, params.copy()
            first_moment, second_moment = np.zeros_like(params), np.zeros_like(params)
            for step in range(1, iterations + 2):      # the start and `iterations` moves scored
                value, grad = self._lml_and_grad(params, fit_X, fit_y)
                if value > best_value:
                    best_value, best_params = value, params.copy()
                first_moment = 0.9 * first_moment + 0.1 * grad
                second_moment = 0.999 * second_moment + 0.001 * grad * grad
                step_size = learning_rate * math.sqrt(1 - 0.999 ** step) / (1 - 0.9 ** step)
                params = np.clip(params + step_size * first_moment / (np.sqrt(second_moment) + 1e-12), low, high)
            self.log_params = best_params
        self.X, self.y = X, y
        self.cholesky = CholeskyFactor(self.kernel(X, X) + self.noise_variance * np.eye(len(y)))
        self.alpha = self.cholesky.solve(y)
        return self

    def add_observations(self, X_new, y_new):
        """Condition on m more points (m, D), (m,): the Cholesky factor keeps its rows, gains m."""
        X_new, y_new = np.atleast_2d(np.asarray(X_new, float)), np.atleast_1d(np.asarray(y_new, float))
        corner = self.kernel(X_new, X_new) + self.noise_variance * np.eye(len(y_new))
        cross = self.kernel(self.X, X_new)
        self.X, self.y = np.vstack([self.X, X_new]), np.concatenate([self.y, y_new])
        try:
            self.cholesky.grow(cross, corner)
            self.alpha = self.cholesky.solve(self.y)
        except np.linalg.LinAlgError:           # a near-duplicate point: refactor all, with jitter
            self.fit(self.X, self.y, optimize=False)

    def predict(self, X):
        """Posterior mean and standard deviation, each (m,), of the latent function (no observation
        noise) at the (m, D) points X."""
        cross = self.kernel(self.X, np.asarray(X, float))
        mean = cross.T @ self.alpha
        v = self.cholesky.solve_lower(cross)
        variance = self.signal_variance - (v * v).sum(0)       # k(x, x) = s for a stationary kernel
        return mean, np.sqrt(np.maximum(variance, 0.0))

    def log_marginal_likelihood(self, return_grad=False):
        """log p(y | X) at the current hyperparameters; with return_grad also d/d log_params."""
        return (self._lml_and_grad(self.log_params, self.X, self.y) if return_grad
                else float(self.cholesky.log_density(self.y, self.alpha)))  # the stored factor


# ---------------------------------------------------------------- Pareto helpers

def pareto_front(costs, losses):
    """Indices of the non-dominated points (both minimized), sorted by cost ascending. Of exact
    duplicates the lowest index is kept; points with a NaN loss are ignored."""
    costs, losses = np.asarray(costs, float), np.asarray(losses, float)
    order = np.lexsort((np.arange(len(costs)), losses, costs))      # by cost, then loss, then index
    order = order[~np.isnan(losses[order])]
    # Sorted so, a point survives only if it strictly beats every point before it (all cheaper or equal).
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(losses[order])[:-1]])
    return order[losses[order] < best_before]


def area_under_front(costs, errors, lower, upper):
    """Mean of the step curve error(c) = min{error_i : cost_i <= c} over c in [lower, upper], i.e. the
    area under the front divided by (upper - lower); Joslim minimizes it. Below the cheapest point
    the curve is extended flat at that point's error (it starts with the cheapest point).
    ValueError when no point has a finite error or the interval is empty (upper <= lower)."""
    if not lower < upper:
        raise ValueError(f"area_under_front needs lower < upper, got {lower} and {upper}")
    front = pareto_front(costs, errors)
    if len(front) == 0:
        raise ValueError("area_under_front needs at least one point with a finite error")
    front_costs, front_errors = np.asarray(costs, float)[front], np.asarray(errors, float)[front]
    edges = np.concatenate([[lower], np.clip(front_costs[1:], lower, upper), [upper]])
    return float((front_errors * np.diff(edges)).sum() / (upper - lower))


# ---------------------------------------------------------------- samplers

def _smallest_multiplier(lower):
    """``lower`` as a float, ValueError unless 0 < lower < 1: a multiplier keeps some channels."""
    if not 0 < float(lower) < 1:
        raise ValueError(f"lower must be in (0, 1): the smallest width multiplier, got {lower}")
    return float(lower)


class UniformSampler:
    """One multiplier f ~ U(lower, 1) for every dimension: the "Slim" / US-Nets baseline. It keeps
    no history: `history_configs` is empty and `observe` takes only an empty array."""

    def __init__(self, num_dims, lower, seed=0):
        self.num_dims, self.lower = num_dims, _smallest_multiplier(lower)
        self.rng = np.random.default_rng(seed)

    def propose(self, count):
        return np.repeat(self.rng.uniform(self.lower, 1.0, size=(count, 1)), self.num_dims, axis=1)

    def history_configs(self):
        return np.zeros((0, self.num_dims))

    def observe(self, losses):
        if len(losses) != 0:
            raise ValueError(f"{type(self).__name__} keeps no history; pass an empty array of losses")

    def state_dict(self):
        return {"num_dims": self.num_dims, "lower": self.lower, "rng_state": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.num_dims, self.lower = int(state["num_dims"]), float(state["lower"])
        self.rng.bit_generator.state = state["rng_state"]


class RandomSampler(UniformSampler):
    """An independent multiplier per dimension: the AutoSlim / two-stage supernet baseline."""

    def propose(self, count):
        return self.rng.uniform(self.lower, 1.0, size=(count, self.num_dims))


class JoslimSampler:
    """Joslim's sampler, on the reference's schedule: `prior_points` configurations with one uniform
    multiplier, then the full network, then one GP-guided proposal per call slot at a target cost
    t ~ U(cost(lower), 1), chosen among `num_candidates` candidates moved onto t by `acquisition`:
    'ei' (`_propose_expected_improvement`) or 'ucb' (`_propose_tchebyshev_ucb`). A trainer calls
    `history_configs`, `observe` (their losses), `propose`, and `state_dict` for checkpoints. The
    GP's hyperparameters are refitted once per `observe`: `fit_iterations` Adam steps (four times
    as many the first time) on at most `fit_subset_size` random points.

    `max_scored` bounds the trainer's re-scoring work per window (None: the whole history, as the
    reference). With a longer history, `history_configs` returns every never-scored proposal
    (even more than `max_scored`), then Pareto layers peeled by cost and latest known loss up to
    `max_scored` in all, the last layer cut to its cheapest points; the GP is fitted on those
    fresh losses only, since a loss measured with older weights is biased.

    `cost_fn` maps an (N, D) array of multipliers to (N,) costs with the full network at 1.0; it must
    be non-decreasing in every multiplier. After `propose`, `last_targets` (NaN for the
    non-GP proposals) and `last_costs` hold the targets and the exact costs reached."""

    def __init__(self, num_dims, lower, cost_fn, prior_points=20, acquisition="ei", beta=0.1,
                 baseline=-3.0, num_candidates=1000, seed=0, cost_tolerance=0.01,
                 fit_iterations=20, fit_subset_size=250, max_scored=None):
        if acquisition not in ("ei", "ucb"):
            raise ValueError(f"acquisition must be 'ei' or 'ucb', got {acquisition!r}")
        self.num_dims, self.lower, self.cost_fn = num_dims, _smallest_multiplier(lower), cost_fn
        self.prior_points, self.acquisition, self.beta, self.baseline = prior_points, acquisition, beta, baseline
        self.num_candidates, self.cost_tolerance, self.max_scored = num_candidates, cost_tolerance, max_scored
        self.fit_iterations, self.fit_subset_size = fit_iterations, fit_subset_size
        self.rng = np.random.default_rng(seed)
        self.lowest_cost = float(self._cost(np.full((1, num_dims), self.lower))[0])
        self.configs = np.zeros((0, num_dims))   # the history (N, D), in proposal order
        self.losses = np.zeros(0)           # (N,) from the last observe(), NaN where not re-scored
        self.latest_losses = np.zeros(0)    # (N,) last measured loss of each config (stale ones too)
        self.gp_log_params = None           # None until the first fit; later fits warm-start from it
        self.needs_fit = True               # refit hyperparameters once per observe(), not per proposal
        self.last_targets, self.last_costs = np.zeros(0), np.zeros(0)

    def _cost(self, configs):
        return np.asarray(self.cost_fn(configs), dtype=float).reshape(len(configs))

    def _unit(self, configs):
        # The GP sees the unit cube so that its lengthscale bounds mean the same for any `lower`.
        return (configs - self.lower) / (1.0 - self.lower)

    def history_configs(self):
        """The (N, D) configurations whose losses the next `observe` takes, in history order."""
        return self.configs[self._to_score()].copy()

    def _to_score(self):
        """Indices of the configurations to re-score this window (see `max_scored`)."""
        count = len(self.configs)
        if self.max_scored is None or count <= self.max_scored:
            return np.arange(count)
        never_scored = np.isnan(self.latest_losses)
        chosen, remaining = list(np.flatnonzero(never_scored)), np.flatnonzero(~never_scored)
        costs = self._cost(self.configs[remaining])
        while len(chosen) < self.max_scored and len(remaining):
            layer = pareto_front(costs, self.latest_losses[remaining])
            chosen.extend(remaining[layer[:self.max_scored - len(chosen)]])
            remaining, costs = np.delete(remaining, layer), np.delete(costs, layer)
        return np.sort(np.array(chosen, dtype=int))

    def observe(self, losses):
        """`losses` (N,): one per row of `history_configs()`, in that order."""
        losses = np.asarray(losses, dtype=float).reshape(-1)
        scored = self._to_score()
        if len(losses) != len(scored):
            raise ValueError(f"observe() needs one loss per history config: "
                             f"{len(scored)} expected, got {len(losses)}")
        self.losses = np.full(len(self.configs), np.nan)
        self.losses[scored] = self.latest_losses[scored] = losses
        self.needs_fit = True

    def propose(self, count):
        """The next `count` configurations, (count, D), appended to the history unscored."""
        targets, costs, chosen_units, model = [], [], [], None
        for _ in range(count):
            target = math.nan
            if len(self.configs) < self.prior_points:
                config = np.full(self.num_dims, self.rng.uniform(self.lower, 1.0))
            elif len(self.configs) == self.prior_points:
                config = np.ones(self.num_dims)          # the full network anchors the front at cost 1
            else:
                model = model or self._conditioned_model()
                target = self.rng.uniform(self.lowest_cost, 1.0)
                config = (self._propose_expected_improvement if self.acquisition == "ei"
                          else self._propose_tchebyshev_ucb)(model, target, chosen_units)
                chosen_units.append(self._unit(config))
            self.configs, self.losses = np.vstack([self.configs, config]), np.append(self.losses, np.nan)
            self.latest_losses = np.append(self.latest_losses, np.nan)
            targets.append(target)
            costs.append(float(self._cost(config[None])[0]))
        self.last_targets, self.last_costs = np.array(targets), np.array(costs)
        return self.configs[len(self.configs) - count:].copy()

    def _conditioned_model(self):
        """The GP on this window's scored configurations (unit cube) and standardized losses. Its X
        and y also gather this call's fantasies; `_model_costs` holds the costs of X's rows."""
        observed = np.isfinite(self.losses)
        if observed.sum() < 2:
            raise RuntimeError("JoslimSampler needs observe() with the losses of its history "
                               "before proposing past the prior phase")
        losses = self.losses[observed]
        scale = losses.std() if losses.std() > 1e-9 else 1.0      # all equal: only center them
        # Cold start: sqrt(D) makes a move of 1 along the diagonal (where the prior points lie) one
        # lengthscale, and 4x the Adam steps; later fits warm-start from the last hyperparameters.
        model = GaussianProcess(np.full(self.num_dims, math.sqrt(self.num_dims)), 1.0, 0.1)
        if self.gp_log_params is not None:
            model.log_params = np.array(self.gp_log_params, dtype=float)
        model.fit(self._unit(self.configs[observed]), (losses - losses.mean()) / scale, optimize=self.needs_fit,
                  iterations=self.fit_iterations * (4 if self.gp_log_params is None else 1),
                  subset_size=self.fit_subset_size, rng=self.rng)
        self.gp_log_params, self.needs_fit = model.log_params.copy(), False
        # Costs are recomputed in one batch here so a restored checkpoint sees bit-identical values.
        self._model_costs = self._cost(self.configs[observed])
        return model

    def _move_to_cost(self, configs, targets, steps=24):
        """Move each row of configs (N, D) onto its target cost (N,) by bisection, all rows at once,
        along a monotone path: toward lower*1 (x(s) = lower + s (x - lower)) from above the target,
        toward the full network (x(s) = x + s (1 - x)) from below. Returns rows (N, D), costs (N,)."""
        above = self._cost(configs) >= targets
        start = np.where(above[:, None], self.lower, configs)       # cost(start) <= target
        end = np.where(above[:, None], configs, 1.0)                 # cost(end) >= target
        low, high = np.zeros(len(configs)), np.ones(len(configs))
        for _ in range(steps):
            middle = 0.5 * (low + high)
            below_target = self._cost(start + middle[:, None] * (end - start)) < targets
            low, high = np.where(below_target, middle, low), np.where(below_target, high, middle)
        # Integer channel rounding makes cost a step function: take whichever side is closer.
        under, over = start + low[:, None] * (end - start), start + high[:, None] * (end - start)
        under_cost, over_cost = self._cost(under), self._cost(over)
        take_over = np.abs(over_cost - targets) < np.abs(under_cost - targets)
        return np.where(take_over[:, None], over, under), np.where(take_over, over_cost, under_cost)

    def _candidates(self, model, targets, chosen_units):
        """Half random configurations in the box, half Gaussian perturbations of the model's front
        configurations close in cost to each row's target (to refine the front), plus the uniform
        configuration; all moved onto `targets` (num_candidates,). Returns them, their costs, the
        GP's posterior mean and std there, and `taken`: within 1e-3 of a `chosen_units` point."""
        num_random = self.num_candidates // 2
        random_configs = self.rng.uniform(self.lower, 1.0, size=(num_random, self.num_dims))
        front = pareto_front(self._model_costs, model.y)
        front_costs = self._model_costs[front]
        front_configs = self.lower + model.X[front] * (1.0 - self.lower)   # back from the unit cube
        local_targets = targets[num_random:-1]
        nearest = np.searchsorted(front_costs, local_targets) + self.rng.integers(-2, 3, size=len(local_targets))
        parents = front_configs[np.clip(nearest, 0, len(front) - 1)]
        # Step sizes log-uniform in [1%, 20%] of the range: small ones polish, large ones explore.
        step = (1.0 - self.lower) * np.exp(self.rng.uniform(math.log(0.01), math.log(0.2), size=(len(parents), 1)))
        local_configs = np.clip(parents + step * self.rng.standard_normal(parents.shape), self.lower, 1.0)
        uniform_config = np.full((1, self.num_dims), self.lower + 0.5 * (1.0 - self.lower))
        configs = np.vstack([random_configs, local_configs, uniform_config])
        configs, costs = self._move_to_cost(configs, targets)
        units = self._unit(configs)
        taken = (np.abs(units[:, None, :] - np.array(chosen_units)[None]).max(-1).min(1) < 1e-3
                 if chosen_units else np.zeros(len(units), dtype=bool))
        return (configs, costs, *model.predict(units), taken)

    def _propose_expected_improvement(self, model, target, chosen_units):
        """acquisition='ei': the candidate at cost t (within `cost_tolerance`) with the largest
        expected improvement over `best`, the lowest observed loss at cost <= t (the front's step
        curve at t, whose area Joslim minimizes); if nothing observed is that cheap, the loss of the
        cheapest observed configuration, as `area_under_front` extends its curve. Proposals of one
        call are made distinct by the kriging believer: the winner joins the GP with its posterior
        mean as a fantasy observation (the mean is unchanged, its uncertainty collapses), and
        candidates within 1e-3 of a chosen point are excluded."""
        candidates, costs, mean, std, taken = self._candidates(
            model, np.full(self.num_candidates, target), chosen_units)
        affordable = self._model_costs <= target
        best = model.y[affordable].min() if affordable.any() else model.y[np.argmin(self._model_costs)]
        score = expected_improvement(mean, std, best)
        if not np.any(score > 0):                        # EI underflowed everywhere: exploit the mean
            score = -mean
        score[np.abs(costs - target) > self.cost_tolerance] = -np.inf
        score[taken] = -np.inf
        if not np.isfinite(score).any():                  # nothing on target: the closest in cost
            score = -np.abs(costs - target)
        winner = int(np.argmax(score))
        model.add_observations(self._unit(candidates[winner])[None], mean[winner:winner + 1])
        self._model_costs = np.append(self._model_costs, costs[winner])
        return candidates[winner]

    def _propose_tchebyshev_ucb(self, model, target, chosen_units):
        """acquisition='ucb', the reference's scheme: UCB mean + sqrt(beta) std of the standardized
        loss (the reference ADDS the std to a minimized loss, a pessimistic bound; kept as is) and
        the exact standardized cost, combined by an augmented Tchebyshev scalarization against
        reference point `baseline`, its weight bisected (<= 10 steps, tolerance 0.02) so the
        arg-min's cost is near t; the winner is then moved onto t exactly. No fantasies (the
        reference had none)."""
        # A pool spread over all costs stands in for the reference's optimization over the whole box.
        pool, pool_costs, mean, std, taken = self._candidates(
            model, self.rng.uniform(self.lowest_cost, 1.0, size=self.num_candidates), chosen_units)
        loss_bound = mean + math.sqrt(self.beta) * std
        history_costs = self._model_costs          # this scheme adds no fantasies: the history's costs
        cost_scale = history_costs.std() if history_costs.std() > 1e-9 else 1.0
        standardized_cost = (pool_costs - history_costs.mean()) / cost_scale
        low, high, weight = 0.0, 1.0, 0.5
        for _ in range(10):
            loss_term = (1.0 - weight) * (loss_bound - self.baseline)
            cost_term = weight * (standardized_cost - self.baseline)
            scalarized = np.maximum(loss_term, cost_term) + 1e-6 * (loss_term + cost_term)
            scalarized[taken] = np.inf
            winner = int(np.argmin(scalarized))
            if abs(pool_costs[winner] - target) <= 0.02:
                break
            # With the reference point below the data (baseline <= 0) more cost weight picks cheaper
            # configurations; the reference flips the direction for baseline > 0, so do we.
            if (pool_costs[winner] < target) == (self.baseline <= 0):
                high, weight = weight, 0.5 * (weight + low)
            else:
                low, weight = weight, 0.5 * (weight + high)
        # The reference stopped here (off target by up to 0.17); exact cost lets us finish the job.
        return self._move_to_cost(pool[winner][None], np.array([target]))[0][0]

    def state_dict(self):
        return {"num_dims": self.num_dims, "lower": self.lower, "configs": self.configs.copy(),
                "losses": self.losses.copy(), "latest_losses": self.latest_losses.copy(),
                "gp_log_params": None if self.gp_log_params is None else self.gp_log_params.copy(),
                "needs_fit": self.needs_fit, "rng_state": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        if int(state["num_dims"]) != self.num_dims or float(state["lower"]) != self.lower:
            raise ValueError("the checkpoint was made with another num_dims or lower; "
                             "construct the sampler to match it")
        self.configs = np.array(state["configs"], dtype=float).reshape(-1, self.num_dims)
        self.losses = np.array(state["losses"], dtype=float)
        self.latest_losses = np.array(state["latest_losses"], dtype=float)
        params = state["gp_log_params"]
        self.gp_log_params = None if params is None else np.array(params, dtype=float)
        self.needs_fit = bool(state["needs_fit"])
        self.rng.bit_generator.state = state["rng_state"]
