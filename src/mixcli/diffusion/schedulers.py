"""Sampling schedulers for `mix generate`: diffusers 0.42.1's DDIM, Euler (ancestral), DPM++ 2M, LCM, PNDM in NumPy."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from mixcli.errors import MixError

F32 = np.float32

# Each diffusers class's constructor arguments and defaults: `NewClass.from_config(old)` keeps exactly these keys.
_BETAS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
_BETAS["trained_betas"] = None
_THRESHOLD = {"thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0}
DEFAULTS = {
    "DDIMScheduler": {
        **_BETAS, "clip_sample": True, "set_alpha_to_one": True, "steps_offset": 0, "prediction_type": "epsilon",
        **_THRESHOLD, "clip_sample_range": 1.0, "timestep_spacing": "leading", "rescale_betas_zero_snr": False,
    },
    "EulerDiscreteScheduler": {
        **_BETAS, "prediction_type": "epsilon", "interpolation_type": "linear", "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "sigma_min": None, "sigma_max": None,
        "timestep_spacing": "linspace", "timestep_type": "discrete", "steps_offset": 0, "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    },
    "EulerAncestralDiscreteScheduler": {
        **_BETAS, "prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    },
    "DPMSolverMultistepScheduler": {
        **_BETAS, "solver_order": 2, "prediction_type": "epsilon", **_THRESHOLD, "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False, "use_karras_sigmas": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
        "flow_shift": 1.0, "final_sigmas_type": "zero", "lambda_min_clipped": -math.inf, "variance_type": None,
        "timestep_spacing": "linspace", "steps_offset": 0, "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False, "time_shift_type": "exponential",
    },
    "LCMScheduler": {
        **_BETAS, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "original_inference_steps": 50, "clip_sample": False, "clip_sample_range": 1.0, "set_alpha_to_one": True,
        "steps_offset": 0, "prediction_type": "epsilon", **_THRESHOLD, "timestep_spacing": "leading",
        "timestep_scaling": 10.0, "rescale_betas_zero_snr": False,
    },
    "PNDMScheduler": {
        **_BETAS, "skip_prk_steps": False, "set_alpha_to_one": False, "prediction_type": "epsilon",
        "timestep_spacing": "leading", "steps_offset": 0,
    },
}  # fmt: skip
_DPM2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
# CLI name -> (diffusers class, the values the name fixes on top of the checkpoint's config).
_NAMES = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {**_DPM2M, "use_karras_sigmas": False}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {**_DPM2M, "use_karras_sigmas": True}),
    "lcm": ("LCMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),  # PLMS only; PRK warm-up steps are not implemented
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(_NAMES)
# Options diffusers has that we do not implement: they must keep these values.
_UNSUPPORTED = {
    "EulerDiscreteScheduler": {"interpolation_type": "linear", "use_beta_sigmas": False, "timestep_type": "discrete"},
    "DPMSolverMultistepScheduler": {
        "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False, "use_dynamic_shifting": False,
        "variance_type": None,
    },
}  # fmt: skip
_PREDICTIONS = {
    "EulerAncestralDiscreteScheduler": ("epsilon", "v_prediction"),
    "PNDMScheduler": ("epsilon", "v_prediction"),
}
_FIX = f"choose one with --scheduler NAME ({', '.join(SCHEDULER_NAMES)})"


def make_scheduler(config: dict, name: str | None = None) -> Scheduler:
    """The scheduler `name` (None: the class `config` names) built from a parsed scheduler_config.json."""
    derived = name is None
    name = _name_for(config) if derived else name
    if name not in _NAMES:
        known = ", ".join(SCHEDULER_NAMES)
        raise MixError(f"unknown scheduler {name!r}; known: {known}", "pass one of them to --scheduler")
    cls_name, fixed = _NAMES[name]
    defaults = DEFAULTS[cls_name]
    values = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    for key, value in fixed.items():
        if derived and values[key] != value:
            raise MixError(f"{cls_name} with {key}={values[key]!r} is not implemented", _FIX)
    values.update(fixed)
    if values.get("solver_type") in ("logrho", "bh1", "bh2"):  # diffusers maps other solvers' types to midpoint
        values["solver_type"] = "midpoint"
    _check_supported(cls_name, values)
    return _CLASSES[cls_name](name, SimpleNamespace(**values))


def diffusers_equivalent(name: str) -> tuple[str, dict]:
    """The diffusers class a scheduler name stands for and the values the name fixes on top of the
    checkpoint's config (what to pass to that class's ``from_config``)."""
    cls_name, fixed = _NAMES[name]
    return cls_name, dict(fixed)


def _name_for(config: dict) -> str:
    cls_name = config.get("_class_name")
    if cls_name == "DPMSolverMultistepScheduler":
        return "dpm++2m-karras" if config.get("use_karras_sigmas") else "dpm++2m"
    for name, (cls, _) in _NAMES.items():
        if cls == cls_name:
            return name
    raise MixError(f"the checkpoint's scheduler {cls_name} is not implemented", _FIX)


def _check_supported(cls_name: str, values: dict) -> None:
    for key, value in _UNSUPPORTED.get(cls_name, {}).items():
        if values[key] != value:
            raise MixError(f"{cls_name} with {key}={values[key]!r} is not implemented", _FIX)
    allowed = _PREDICTIONS.get(cls_name, ("epsilon", "v_prediction", "sample"))
    if values["prediction_type"] not in allowed:
        raise MixError(f"{cls_name} does not support prediction_type {values['prediction_type']!r}", _FIX)
    if values["timestep_spacing"] not in ("leading", "trailing", "linspace"):
        raise MixError(f"timestep_spacing {values['timestep_spacing']!r} is not supported", "use leading or trailing")
    if values.get("use_karras_sigmas") and values.get("use_exponential_sigmas"):
        raise MixError("use_karras_sigmas and use_exponential_sigmas are both set", "set only one of them")


# ---- shared schedule math (diffusers computes these in float32 torch; cumprod accumulates in float64 there) ----


def _cumprod(x: np.ndarray) -> np.ndarray:
    return np.cumprod(x.astype(np.float64)).astype(F32)


def _betas(c: SimpleNamespace) -> np.ndarray:
    """The training betas: trained_betas, or the named schedule (diffusers' `__init__`)."""
    T = c.num_train_timesteps
    if c.trained_betas is not None:
        return np.asarray(c.trained_betas, F32)
    if c.beta_schedule == "linear":
        return np.linspace(c.beta_start, c.beta_end, T).astype(F32)
    if c.beta_schedule == "scaled_linear":
        return np.linspace(c.beta_start**0.5, c.beta_end**0.5, T).astype(F32) ** 2
    if c.beta_schedule == "squaredcos_cap_v2":  # betas_for_alpha_bar(T), cosine
        bar = [math.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
        return np.array([min(1 - bar[i + 1] / bar[i], 0.999) for i in range(T)], F32)
    raise MixError(f"beta_schedule {c.beta_schedule!r} is not supported", "use linear or scaled_linear")


def _alphas_cumprod(c: SimpleNamespace) -> np.ndarray:
    betas = _betas(c)
    if getattr(c, "rescale_betas_zero_snr", False):  # rescale_zero_terminal_snr (arXiv 2305.08891, Algorithm 1)
        root = np.sqrt(_cumprod(1 - betas))
        first, last = root[0], root[-1]
        root = (root - last) * (first / (first - last))
        bar = root**2
        betas = 1 - np.concatenate([bar[:1], bar[1:] / bar[:-1]])
    return _cumprod(1 - betas)


def _spaced(c: SimpleNamespace, steps: int) -> np.ndarray:
    """Descending timesteps for timestep_spacing (table 2 of arXiv 2305.08891), unrounded for linspace."""
    T = c.num_train_timesteps
    if c.timestep_spacing == "linspace":
        return np.linspace(0, T - 1, steps)[::-1].copy()
    if c.timestep_spacing == "leading":
        return np.arange(steps)[::-1] * (T // steps) + c.steps_offset
    return np.round(np.arange(T, 0, -T / steps)) - 1  # trailing


def _sigma_ramp(c: SimpleNamespace, lo: float, hi: float, steps: int) -> np.ndarray | None:
    """Karras (rho 7) or exponential sigmas from hi down to lo, or None for neither (diffusers' _convert_to_*)."""
    lo = lo if getattr(c, "sigma_min", None) is None else c.sigma_min
    hi = hi if getattr(c, "sigma_max", None) is None else c.sigma_max
    if c.use_karras_sigmas:
        lo_r, hi_r = lo ** (1 / 7.0), hi ** (1 / 7.0)
        return (hi_r + np.linspace(0, 1, steps) * (lo_r - hi_r)) ** 7.0
    if c.use_exponential_sigmas:
        return np.exp(np.linspace(math.log(hi), math.log(lo), steps))
    return None


def _sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timesteps of `sigmas`, interpolating in log-sigma (diffusers' _sigma_to_t, vectorised)."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def _threshold(x0: np.ndarray, c: SimpleNamespace) -> np.ndarray:
    """Dynamic thresholding (Imagen, arXiv 2205.11487): clamp to a per-sample percentile and rescale."""
    flat = x0.reshape(x0.shape[0], -1)
    s = np.clip(np.quantile(np.abs(flat), c.dynamic_thresholding_ratio, axis=1), 1, c.sample_max_value)
    s = s.astype(F32)[:, None]
    return (np.clip(flat, -s, s) / s).reshape(x0.shape)


def _clean_x0(x0: np.ndarray, c: SimpleNamespace) -> np.ndarray:
    if c.thresholding:
        return _threshold(x0, c)
    return np.clip(x0, -c.clip_sample_range, c.clip_sample_range) if getattr(c, "clip_sample", False) else x0


def _per_sample(values: np.ndarray, ndim: int) -> np.ndarray:
    """Per-batch scalars shaped to broadcast against a (B, C, H, W) sample."""
    return np.asarray(values, F32).reshape(-1, *([1] * (ndim - 1)))


# ---- schedulers ----


class Scheduler:
    """State shared by all schedulers; subclasses implement `_schedule` and `_step`."""

    order = 1
    needs_noise = False

    def __init__(self, name: str, config: SimpleNamespace):
        self.name, self.cfg = name, config
        self.alphas_cumprod = _alphas_cumprod(config)
        self.final_alpha_cumprod = F32(1.0) if getattr(config, "set_alpha_to_one", False) else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.timesteps: np.ndarray | None = None
        self.num_inference_steps = 0
        self._begin: int | None = None
        self._index: int | None = None

    def set_timesteps(self, steps: int) -> None:
        """Compute the schedule for `steps` inference steps; starts a fresh run."""
        if steps < 1:
            raise MixError(f"steps must be at least 1, got {steps}", "pass --steps 1 or more")
        if steps > self.cfg.num_train_timesteps:
            raise MixError(f"steps must be at most {self.cfg.num_train_timesteps}, got {steps}", "pass fewer --steps")
        self.num_inference_steps = steps
        self._begin = self._index = None
        self._schedule(steps)

    def start_at(self, index: int) -> None:
        """Begin the run at timesteps[index] (img2img; diffusers' set_begin_index)."""
        self._begin = index

    def scale_model_input(self, sample: np.ndarray, t) -> np.ndarray:
        """The UNet's input for `sample` at timestep t."""
        return sample

    def step(self, model_output: np.ndarray, t, sample: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """One denoising step from timestep t; `noise` is the standard normal draw of stochastic schedulers."""
        if self.timesteps is None:
            raise ValueError("call set_timesteps before step")
        if self.needs_noise and noise is None:
            raise ValueError(f"the {self.name} scheduler needs noise for each step")
        return self._step(np.asarray(model_output, F32), t, np.asarray(sample, F32), noise)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, t) -> np.ndarray:
        """`original` noised to timestep t (per sample if t is an array): sqrt(a) x + sqrt(1 - a) noise."""
        a = self.alphas_cumprod[np.asarray(t).reshape(-1)]
        return _per_sample(a**0.5, original.ndim) * original + _per_sample((1 - a) ** 0.5, original.ndim) * noise

    def _index_of(self, t) -> int:
        hits = np.flatnonzero(self.timesteps == t)
        if not len(hits):
            raise ValueError(f"timestep {t} is not in the schedule")
        return int(hits[1] if len(hits) > 1 else hits[0])  # the second of a repeated timestep, as diffusers does

    def _current(self, t) -> int:
        """The step index, found from t (or start_at) on the first call of a run (diffusers' _init_step_index)."""
        if self._index is None:
            self._index = self._begin if self._begin is not None else self._index_of(t)
        return self._index


class DDIM(Scheduler):
    """DDIMScheduler with eta = 0 (deterministic)."""

    def _schedule(self, steps: int) -> None:
        self.timesteps = np.round(_spaced(self.cfg, steps)).astype(np.int64)

    def _step(self, out, t, sample, noise):
        prev_t = t - self.cfg.num_train_timesteps // self.num_inference_steps  # diffusers uses this for every spacing
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t = 1 - a_t
        if self.cfg.prediction_type == "epsilon":
            x0, eps = (sample - b_t**0.5 * out) / a_t**0.5, out
        elif self.cfg.prediction_type == "sample":
            x0, eps = out, (sample - a_t**0.5 * out) / b_t**0.5
        else:  # v_prediction
            x0, eps = a_t**0.5 * sample - b_t**0.5 * out, a_t**0.5 * out + b_t**0.5 * sample
        x0 = _clean_x0(x0, self.cfg)
        return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


class LCM(Scheduler):
    """LCMScheduler: consistency-model steps on a subset of the distillation schedule, re-noised between steps."""

    needs_noise = True

    def _schedule(self, steps: int) -> None:
        original = self.cfg.original_inference_steps
        if steps > original:
            raise MixError(f"the lcm scheduler takes at most {original} steps, got {steps}", "pass fewer --steps")
        origin = np.arange(1, original + 1) * (self.cfg.num_train_timesteps // original) - 1
        picks = np.floor(np.linspace(0, original, steps, endpoint=False)).astype(np.int64)
        self.timesteps = origin[::-1][picks]

    def _step(self, out, t, sample, noise):
        i = self._current(t)
        prev_t = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else t
        a_t, a_prev = self.alphas_cumprod[t], self.alphas_cumprod[prev_t]
        b_t = 1 - a_t
        scaled = F32(t) * F32(self.cfg.timestep_scaling)  # boundary condition scalings, sigma_data = 0.5
        c_skip = F32(0.25) / (scaled**2 + F32(0.25))
        c_out = scaled / (scaled**2 + F32(0.25)) ** 0.5
        if self.cfg.prediction_type == "epsilon":
            x0 = (sample - np.sqrt(b_t) * out) / np.sqrt(a_t)
        elif self.cfg.prediction_type == "sample":
            x0 = out
        else:
            x0 = np.sqrt(a_t) * sample - np.sqrt(b_t) * out
        denoised = c_out * _clean_x0(x0, self.cfg) + c_skip * sample
        self._index += 1
        if i == self.num_inference_steps - 1:
            return denoised
        return np.sqrt(a_prev) * denoised + np.sqrt(1 - a_prev) * np.asarray(noise, F32)


class PNDM(Scheduler):
    """PNDMScheduler with skip_prk_steps: PLMS, linear multistep on the last four noise estimates."""

    def _schedule(self, steps: int) -> None:
        up = np.round(_spaced(self.cfg, steps)[::-1]).astype(np.int64)
        self.timesteps = np.concatenate([up[:-1], up[-2:-1], up[-1:]])[::-1].copy()  # the second step runs twice
        self._ets: list[np.ndarray] = []
        self._counter, self._first_sample = 0, None

    def _step(self, out, t, sample, noise):
        jump = self.cfg.num_train_timesteps // self.num_inference_steps
        prev_t = t - jump
        if self._counter != 1:
            self._ets = self._ets[-3:] + [out]
        else:  # the repeated timestep redoes step one from its start with the averaged estimate (Heun-like)
            prev_t, t = t, t + jump
        e = self._ets
        if len(e) == 1 and self._counter == 0:
            eps, self._first_sample = out, sample
        elif len(e) == 1 and self._counter == 1:
            eps, sample, self._first_sample = (out + e[-1]) / 2, self._first_sample, None
        elif len(e) == 2:
            eps = (3 * e[-1] - e[-2]) / 2
        elif len(e) == 3:
            eps = (23 * e[-1] - 16 * e[-2] + 5 * e[-3]) / 12
        else:
            eps = 1 / 24 * (55 * e[-1] - 59 * e[-2] + 37 * e[-3] - 9 * e[-4])
        self._counter += 1
        return self._prev_sample(sample, t, prev_t, eps)

    def _prev_sample(self, sample, t, prev_t, eps):
        """Formula (9) of the PNDM paper (arXiv 2202.09778)."""
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t, b_prev = 1 - a_t, 1 - a_prev
        if self.cfg.prediction_type == "v_prediction":
            eps = a_t**0.5 * eps + b_t**0.5 * sample
        denom = a_t * b_prev**0.5 + (a_t * b_t * a_prev) ** 0.5
        return (a_prev / a_t) ** 0.5 * sample - (a_prev - a_t) * eps / denom


class _SigmaScheduler(Scheduler):
    """Schedulers that walk a sigma ladder (noise / signal ratio), indexed by step."""

    def __init__(self, name: str, config: SimpleNamespace):
        super().__init__(name, config)
        if config.rescale_betas_zero_snr:  # keep the last sigma finite, as diffusers does
            self.alphas_cumprod[-1] = F32(2**-24)
        self.train_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5  # (T,) float32

    def _noise_sigma(self, t, ndim: int) -> np.ndarray:
        if self._begin is None:
            index = [self._index_of(x) for x in np.asarray(t).reshape(-1)]
        else:
            index = self._index if self._index is not None else self._begin
        return _per_sample(self.sigmas[index], ndim)

    def _finish(self, sigmas: np.ndarray, timesteps: np.ndarray) -> None:
        last = self.train_sigmas[0] if self.cfg.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = np.append(sigmas, last).astype(F32)
        self.timesteps = timesteps


class _EulerBase(_SigmaScheduler):
    """Euler-type sampling: the UNet sees sample / sqrt(sigma^2 + 1), noise is added as sample + sigma noise."""

    _ramps = False  # whether Karras / exponential sigmas apply

    def _schedule(self, steps: int) -> None:
        timesteps = _spaced(self.cfg, steps).astype(F32)
        sigmas = np.interp(timesteps, np.arange(len(self.train_sigmas)), self.train_sigmas)
        ramp = _sigma_ramp(self.cfg, sigmas[-1].item(), sigmas[0].item(), steps) if self._ramps else None
        if ramp is not None:
            sigmas, timesteps = ramp, _sigma_to_t(ramp, np.log(self.train_sigmas)).astype(F32)
        self._finish(sigmas, timesteps)
        top = self.sigmas.max()
        self.init_noise_sigma = float(top if self.cfg.timestep_spacing != "leading" else (top**2 + 1) ** 0.5)

    def scale_model_input(self, sample: np.ndarray, t) -> np.ndarray:
        """The sample divided by sqrt(sigma^2 + 1), so the UNet sees unit variance."""
        sigma = self.sigmas[self._current(t)]
        return sample / (sigma**2 + 1) ** 0.5

    def add_noise(self, original: np.ndarray, noise: np.ndarray, t) -> np.ndarray:
        """`original` + sigma noise, sigma from start_at's index (or from t when start_at was not called)."""
        return original + noise * self._noise_sigma(t, original.ndim)

    def _x0(self, out, sample, sigma):
        if self.cfg.prediction_type == "epsilon":
            return sample - sigma * out
        if self.cfg.prediction_type == "v_prediction":
            return out * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        return out


class Euler(_EulerBase):
    """EulerDiscreteScheduler (Karras et al. 2022, Algorithm 2, without churn)."""

    _ramps = True

    def _step(self, out, t, sample, noise):
        i = self._current(t)
        sigma = self.sigmas[i]
        derivative = (sample - self._x0(out, sample, sigma)) / sigma
        self._index += 1
        return sample + derivative * (self.sigmas[i + 1] - sigma)


class EulerAncestral(_EulerBase):
    """EulerAncestralDiscreteScheduler: an Euler step to sigma_down, then fresh noise of scale sigma_up."""

    needs_noise = True

    def _finish(self, sigmas: np.ndarray, timesteps: np.ndarray) -> None:
        self.sigmas, self.timesteps = np.append(sigmas, 0.0).astype(F32), timesteps

    def _step(self, out, t, sample, noise):
        i = self._current(t)
        sigma, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (sample - self._x0(out, sample, sigma)) / sigma
        self._index += 1
        return sample + derivative * (sigma_down - sigma) + np.asarray(noise, F32) * sigma_up


class DPMSolver2M(_SigmaScheduler):
    """DPMSolverMultistepScheduler, algorithm dpmsolver++, order 2 (Lu et al. 2022, arXiv 2211.01095)."""

    def _schedule(self, steps: int) -> None:
        c, T = self.cfg, self.cfg.num_train_timesteps
        lambdas = np.log(np.sqrt(self.alphas_cumprod)) - np.log(np.sqrt(1 - self.alphas_cumprod))
        last = T - int(np.searchsorted(lambdas[::-1], c.lambda_min_clipped))
        if c.timestep_spacing == "linspace":
            timesteps = np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
        elif c.timestep_spacing == "leading":
            timesteps = np.arange(steps + 1)[::-1][:-1] * (last // (steps + 1)) + c.steps_offset
        else:
            timesteps = np.arange(last, 0, -T / steps).round().astype(np.int64) - 1
        base = self.train_sigmas
        ramp = _sigma_ramp(c, base[0].item(), base[-1].item(), steps)
        if ramp is None:
            sigmas = np.interp(timesteps, np.arange(len(base)), base)
        else:
            sigmas, timesteps = ramp, _sigma_to_t(ramp, np.log(base))
            if c.use_karras_sigmas and c.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        self._finish(sigmas, timesteps.astype(np.int64))
        self.num_inference_steps = len(self.timesteps)
        self._x0s: list[np.ndarray] = []

    def add_noise(self, original: np.ndarray, noise: np.ndarray, t) -> np.ndarray:
        """alpha_t `original` + sigma_t noise at start_at's index (or at t when start_at was not called)."""
        alpha, sigma = self._alpha_sigma(self._noise_sigma(t, original.ndim))
        return alpha * original + sigma * noise

    @staticmethod
    def _alpha_sigma(sigma):
        alpha = 1 / (sigma**2 + 1) ** 0.5
        return alpha, sigma * alpha

    def _lambda(self, i: int):
        alpha, sigma = self._alpha_sigma(self.sigmas[i])
        with np.errstate(divide="ignore"):  # sigma 0 at the end: lambda = inf, exp(-h) = 0
            return alpha, sigma, np.log(alpha) - np.log(sigma)

    def _step(self, out, t, sample, noise):
        c, i, n = self.cfg, self._current(t), len(self.timesteps)
        final = i == n - 1 and (c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero")
        alpha_s, sigma_s, lambda_s = self._lambda(i)
        if c.prediction_type == "epsilon":
            x0 = (sample - sigma_s * out) / alpha_s
        elif c.prediction_type == "v_prediction":
            x0 = alpha_s * sample - sigma_s * out
        else:
            x0 = out
        x0 = _threshold(x0, c) if c.thresholding else x0
        self._x0s = [*self._x0s[-1:], x0]
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1)
        h = lambda_t - lambda_s
        prev = sigma_t / sigma_s * sample - alpha_t * (np.exp(-h) - 1.0) * x0
        if len(self._x0s) == 2 and not final:
            with np.errstate(divide="ignore"):  # h = 0 when a final sigma_min repeats the last sigma, as in diffusers
                r0 = (lambda_s - self._lambda(i - 1)[2]) / h
            d1 = 1.0 / r0 * (x0 - self._x0s[0])
            if c.solver_type == "midpoint":
                prev = prev - 0.5 * (alpha_t * (np.exp(-h) - 1.0)) * d1
            else:  # heun
                prev = prev + alpha_t * ((np.exp(-h) - 1.0) / h + 1.0) * d1
        self._index += 1
        return prev


_CLASSES = {
    "DDIMScheduler": DDIM,
    "EulerDiscreteScheduler": Euler,
    "EulerAncestralDiscreteScheduler": EulerAncestral,
    "DPMSolverMultistepScheduler": DPMSolver2M,
    "LCMScheduler": LCM,
    "PNDMScheduler": PNDM,
}
