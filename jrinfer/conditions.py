"""Condition effects: one model fitted jointly to several recordings, chosen parameters differing.

This is the DCM idea of condition-specific ("B matrix") effects (Kiebel, David &
Friston 2006, "Dynamic causal modelling of evoked responses in EEG/MEG with
lead field parameterization", NeuroImage 30:1273; David et al. 2006, NeuroImage
30:1255) written as an :class:`~jrinfer.observation.Observation`, so that
:class:`~jrinfer.InverseProblem` and every backend fit it unchanged:

* :class:`ConditionData` holds one data set (spectrum or ERP) per condition,
  all on the same frequency or time grid;
* :class:`ConditionObservation` wraps the observation of one condition. Every
  parameter is shared by the conditions except (i) the noise parameters
  (``log_precision``), which each condition has its own of (recordings differ in
  length and so in estimator noise) and (ii) the parameters in ``vary``, which
  in condition ``c`` (not the first, the reference) are modulated by a
  difference ``delta_<name>_<c>``:
  ``theta_c = theta_ref * exp(delta)`` (log scale, for positive or
  sign-carrying scale parameters: ``delta`` is a log ratio) or
  ``theta_c = theta_ref + delta`` (additive, for locations such as ``v0``,
  latencies and baselines);
* :func:`condition_effects` reports each difference with its posterior interval
  and its evidence: Bayesian model reduction (Friston & Penny 2011; Friston et
  al. 2016, "Bayesian model reduction and empirical Bayes for group (DCM)
  studies", NeuroImage 128:413) of the reduced model "no difference"
  (``delta = 0``) from the full posterior, without refitting;
* :func:`no_difference` weighs the joint reduced model "no parameter differs
  between conditions" (every ``delta = 0`` at once) against the full model
  the same way;
* :func:`group_effects` summarises the differences over subjects (one fit
  per subject): fixed effects by Bayesian parameter averaging (Kasess et al.
  2010) and summed log Bayes factors (Stephan et al. 2009, 2010), random
  effects by the summary-statistics t-test (Stephan et al. 2010), and says
  where the two disagree.

Prior of a difference
---------------------
``delta ~ Normal(0, sqrt(2) s)`` where ``s`` is the prior standard deviation of
the parameter itself in its unconstrained coordinate (``sd_log`` of a
log-normal, ``sd`` of a normal): the distribution of the difference of two
independent draws from the parameter's prior. The full model thus lets each
condition's value range as freely as a separate fit of that condition would,
and no more; the reduced model says the two are equal. With the default
``sd_log = 0.2`` of the JR constants this is ``sd = 0.28``: a task/rest ratio
within 0.63-1.59 with 90 % prior probability. Bayes factors depend on this
width (Lindley's paradox): a wider prior favours "no difference" more. For
that reason log-scale differences are capped at ``sd = 0.5`` (:data:`MAX_LOG_SD`:
a ratio within 0.44-2.3 with 90 % prior probability): a deliberately vague
prior on a scale (the spectral ``gain``, ``sd_log = 1.5``, which only has to
reach the recording's unknown absolute scale) says nothing about how much a
condition can change it, and an uncapped ``sqrt(2) * 1.5`` would make "no
difference" win against any modest change. Give explicit ``delta_*`` priors
(``--prior``) to change these choices.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from jrinfer import _checks
from jrinfer.observation import EEG_BANDS_HZ, FitQuality, GaussianTarget, Observation, ObservedData, Prediction

__all__ = [
    "ConditionData", "ConditionObservation", "condition_effects", "no_difference", "group_effects", "delta_gaussian",
    "format_alpha_power", "ALPHA_POWER_BAND_HZ",
    "ADDITIVE", "MAX_LOG_SD",
    "INTERVAL_VS_BF",
]

#: Parameters whose differences are additive (locations, not scales); every other varied parameter is
#: modulated on a log scale.
ADDITIVE = frozenset({"v0", "input_latency", "baseline", "log_precision"})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_SQRT2 = math.sqrt(2.0)
#: Largest prior sd of a log-scale difference (module notes).
MAX_LOG_SD = 0.5


def _check_condition_names(names) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(f"conditions must be a sequence of names such as ('rest', 'task'), got {names!r}")
    names = tuple(names)
    if len(names) < 2:
        raise ValueError(f"conditions must name at least two conditions, got {names!r}")
    bad = [n for n in names if not isinstance(n, str) or not _NAME.match(n)]
    if bad:
        raise ValueError(
            f"condition names must be letters and digits starting with a letter (e.g. rest, task2), got {bad!r}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique, got {names!r}")
    return names


@dataclass(frozen=True)
class ConditionData:
    """One data set per condition, fitted jointly (see :class:`ConditionObservation`).

    Parameters
    ----------
    datasets : mapping of str to data
        Condition name -> data container (e.g. :class:`~jrinfer.SpectrumData`),
        in order; the first condition is the reference. Names are letters and
        digits (they become parts of parameter names). All data sets must be
        of one type and on the same grid (checked by the observation).

    Attributes
    ----------
    conditions : tuple of str
    metadata : dict
        ``warnings`` of every data set, prefixed with its condition;
        ``conditions``: each data set's own metadata; ``channels_used`` when
        every condition used the same channels; ``epochs`` (per condition)
        when the data were averaged from epochs.
    """

    datasets: Mapping
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.datasets, Mapping):
            raise ValueError(f"datasets must be a mapping condition -> data, got {type(self.datasets).__name__}")
        names = _check_condition_names(list(self.datasets))
        types = {type(d).__name__ for d in self.datasets.values()}
        if len(types) != 1:
            raise ValueError(f"datasets must all be of one type, got {sorted(types)}")
        object.__setattr__(self, "datasets", dict(self.datasets))
        md = dict(self.metadata)
        md["warnings"] = [
            f"{c}: {w}" for c, d in self.datasets.items() for w in getattr(d, "metadata", {}).get("warnings", [])
        ]
        md["conditions"] = {c: dict(getattr(d, "metadata", {})) for c, d in self.datasets.items()}
        epochs = {c: getattr(d, "metadata", {}).get("epochs") for c, d in self.datasets.items()}
        if any(e is not None for e in epochs.values()):
            md["epochs"] = epochs  # per condition: events, epochs averaged and rejected
        used = [getattr(d, "metadata", {}).get("channels_used") for d in self.datasets.values()]
        if used[0] is not None and all(u == used[0] for u in used):
            md["channels_used"] = list(used[0])  # the same channels in every condition
        object.__setattr__(self, "metadata", md)
        object.__setattr__(self, "_names", names)

    @property
    def conditions(self) -> tuple[str, ...]:
        return self._names

    def __getitem__(self, condition: str):
        return self.datasets[condition]

    def __repr__(self) -> str:
        return f"ConditionData({', '.join(f'{c}={d!r}' for c, d in self.datasets.items())})"


class ConditionObservation(Observation):
    """Several conditions explained by one observation model with condition-specific parameters.

    Parameters
    ----------
    base : Observation
        The observation of a single condition (e.g.
        :class:`~jrinfer.SpectrumObservation`); it must accept predictions of
        shape ``(*batch, P)`` or ``(*batch, C, P)`` as it produced them.
    conditions : sequence of str
        Condition names in the order of the data; the first is the reference.
    vary : sequence of str or mapping of str to {"log", "additive"}
        Parameters (JR constants or observation parameters) that may differ
        between conditions; a sequence takes ``"additive"`` for
        :data:`ADDITIVE` names and ``"log"`` otherwise.
    per_condition : sequence of str, optional
        Parameters every condition has its own value of (not differences:
        separate parameters ``<name>_<condition>`` for the non-reference
        conditions). Default: the base observation's noise parameters
        (:meth:`~jrinfer.observation.Observation.gaussian_target`), or none
        when its likelihood is not Gaussian.

    Notes
    -----
    Parameters: the base observation's (for the reference condition, shared
    by all), ``<p>_<c>`` for each ``per_condition`` parameter ``p`` and
    non-reference condition ``c``, and ``delta_<v>_<c>`` for each varied
    ``v``. The data are the conditions' channels stacked, named
    ``<condition>:<channel>``. The log-likelihood is the sum over conditions
    (conditions are independent given the parameters). Prior of the
    differences: see the module notes.

    Raises
    ------
    ValueError
        ``base`` is not an Observation; bad or repeated condition names;
        ``vary`` names a parameter the base does not accept, or one also in
        ``per_condition``; an unknown modulation.
    """

    data_type = ConditionData

    def __init__(self, base: Observation, conditions, vary, per_condition=None):
        if not isinstance(base, Observation) or isinstance(base, ConditionObservation):
            raise ValueError(f"base must be a single-condition jrinfer Observation, got {type(base).__name__}")
        self.base = base
        self.conditions = _check_condition_names(conditions)
        if isinstance(vary, Mapping):
            vary = dict(vary)
        elif isinstance(vary, str) or not isinstance(vary, Sequence):
            raise ValueError(f"vary must be a sequence of parameter names such as ('a', 'b'), got {vary!r}")
        else:
            vary = {v: ("additive" if v in ADDITIVE else "log") for v in vary}
        if not vary:
            raise ValueError("vary must name at least one parameter that may differ between conditions, got none")
        for name, mode in vary.items():
            _checks.check_option(f"vary[{name!r}]", mode, ("log", "additive"))
        known = set(base.accepted_parameters())
        unknown = [v for v in vary if v not in known]
        if unknown:
            raise ValueError(f"vary names parameter(s) {unknown} that {base!r} does not use; known: {sorted(known)}")
        self.vary = vary
        self._per_condition = None if per_condition is None else tuple(per_condition)
        both = sorted(set(vary) & set(self._per_condition or ()))
        if both:
            raise ValueError(f"parameter(s) {both} are in both vary and per_condition; choose one")
        self._shared: dict = {}

    def __repr__(self) -> str:
        vary = ", ".join(f"{k}:{m}" for k, m in self.vary.items())
        return f"ConditionObservation({self.base!r}, conditions={list(self.conditions)}, vary=[{vary}])"

    # ------------------------------------------------------------ names
    @property
    def reference(self) -> str:
        """The reference condition (the first): its parameters are the shared ones."""
        return self.conditions[0]

    @property
    def others(self) -> tuple[str, ...]:
        return self.conditions[1:]

    def delta_name(self, name: str, condition: str) -> str:
        """Parameter name of the difference of ``name`` in ``condition`` from the reference."""
        return f"delta_{name}_{condition}"

    def per_condition(self, data=None) -> tuple[str, ...]:
        """Parameters each condition has its own value of (default: the base's noise parameters).

        The default is resolved from the data the first time they are seen
        (:meth:`check_data`); before that it is empty.
        """
        if self._per_condition is None and data is not None:
            try:
                noise = self.base.gaussian_target(data[self.reference]).noise_parameters
                self._per_condition = tuple(n for n in noise if n not in self.vary)
            except ValueError:  # not a Gaussian likelihood: no noise parameters to duplicate
                self._per_condition = ()
        return self._per_condition or ()

    def _extra_names(self, data=None) -> list[str]:
        own = [f"{p}_{c}" for p in self.per_condition(data) for c in self.others]
        return own + [self.delta_name(v, c) for v in self.vary for c in self.others]

    def _ref(self, data):
        return None if data is None else data[self.reference]

    def parameter_names(self, data=None) -> tuple[str, ...]:
        return tuple(self.base.parameter_names(self._ref(data))) + tuple(self._extra_names(data))

    EFFECTS = "condition differences"

    def effect_parameters(self, data=None) -> tuple[str, ...]:
        """The differences ``delta_<name>_<condition>`` (see :meth:`Observation.effect_parameters`)."""
        return tuple(self.delta_name(v, c) for v in self.vary for c in self.others)

    def model_parameter_names(self) -> tuple[str, ...]:
        return tuple(self.base.model_parameter_names())

    def required_parameters(self, data=None) -> tuple[str, ...]:
        return tuple(self.base.required_parameters(self._ref(data))) + tuple(self._extra_names(data))

    def parameter_units(self, data=None) -> dict[str, str]:
        units = dict(self.base.parameter_units(self._ref(data)))
        for p in self.per_condition(data):
            for c in self.others:
                units[f"{p}_{c}"] = units.get(p, "")
        for v, mode in self.vary.items():
            for c in self.others:
                units[self.delta_name(v, c)] = "log ratio" if mode == "log" else units.get(v, "")
        return units

    # ------------------------------------------------------------- data
    def check_data(self, data) -> None:
        super().check_data(data)
        self.per_condition(data)
        if data.conditions != self.conditions:
            raise ValueError(
                f"data has conditions {list(data.conditions)} but the observation expects {list(self.conditions)}"
            )
        ref = None
        for c in self.conditions:
            self.base.check_data(data[c])
            obs = self.base.observed_data(data[c])
            if ref is None:
                ref = obs
                continue
            same = obs.coord_values.shape == ref.coord_values.shape and bool(
                torch.allclose(obs.coord_values, ref.coord_values, rtol=1e-9, atol=1e-12)
            )
            if not same:
                raise ValueError(
                    f"every condition must be on the same {ref.coord} grid: {self.reference} has "
                    f"{ref.coord_values.numel()} points {float(ref.coord_values[0]):g}-{float(ref.coord_values[-1]):g} "
                    f"{ref.coord_units}, {c} has {obs.coord_values.numel()} points "
                    f"{float(obs.coord_values[0]):g}-{float(obs.coord_values[-1]):g} {obs.coord_units} "
                    "(use the same fmin/fmax and Welch segment, or tmin/tmax and sampling rate)"
                )
            if obs.units != ref.units:
                raise ValueError(f"every condition must be in the same units: {self.reference} {ref.units}, {c} {obs.units}")

    def observed_data(self, data) -> ObservedData:
        parts = [self.base.observed_data(data[c]) for c in self.conditions]
        ref = parts[0]
        channels = tuple(f"{c}:{ch}" for c, p in zip(self.conditions, parts) for ch in p.channels)
        values = torch.cat([p.values for p in parts], 0)
        return ObservedData(values, ref.coord, ref.coord_values, ref.coord_units, channels, ref.units)

    def _n_channels(self, data) -> list[int]:
        return [int(self.base.observed_data(data[c]).values.shape[0]) for c in self.conditions]

    # ------------------------------------------------------- parameters
    def condition_parameters(self, params: dict, condition: str) -> dict:
        """The base observation's parameters in ``condition`` (shared, own and modulated values)."""
        extra = set(self._extra_names())
        out = {k: v for k, v in params.items() if k not in extra and not k.startswith("delta_")}
        if condition == self.reference:
            return out
        for p in self.per_condition():
            key = f"{p}_{condition}"
            if key in params:
                out[p] = params[key]
        for v, mode in self.vary.items():
            d = params.get(self.delta_name(v, condition))
            if d is None:
                continue
            if v not in out:
                raise ValueError(f"the varied parameter {v!r} needs a value (free or fixed) for the reference condition")
            base = torch.as_tensor(out[v], dtype=torch.float64)
            d = torch.as_tensor(d, dtype=torch.float64)
            out[v] = base * torch.exp(d) if mode == "log" else base + d
        return out

    # ------------------------------------------------------- prediction
    def _split(self, value: torch.Tensor, data) -> list[torch.Tensor]:
        """The joint ``(*batch, sum C, P)`` value as the base's per-condition values."""
        out, start = [], 0
        for c, n in zip(self.conditions, self._n_channels(data)):
            part = value[..., start : start + n, :]
            start += n
            if self._layout(c):
                part = part[..., 0, :]
            out.append(part)
        return out

    def _layout(self, condition: str) -> bool:
        try:
            return self._shared[condition]
        except KeyError:
            raise ValueError(
                "ConditionObservation: a prediction value must come from this observation's predict "
                "(call predict first)"
            ) from None

    def predict(self, params: dict, data) -> Prediction:
        """Predictions of every condition, channels stacked: shape ``(*batch, sum C, P)``."""
        self.per_condition(data)  # resolve the default per-condition parameters from the data
        values, valids, reasons_by = [], [], []
        for c, n in zip(self.conditions, self._n_channels(data)):
            pred = self.base.predict(self.condition_parameters(params, c), data[c])
            shared = pred.value.dim() == pred.valid.dim() + 1
            self._shared[c] = shared
            v = pred.value.unsqueeze(-2) if shared else pred.value
            values.append(v.expand(*v.shape[:-2], n, v.shape[-1]))
            valids.append(pred.valid)
            reasons_by.append(iter(pred.reasons))
        shape = torch.broadcast_shapes(*(v.shape[:-2] for v in values), *(v.shape for v in valids))
        values = [v.expand(*shape, *v.shape[-2:]) for v in values]
        valids = [torch.broadcast_to(v, shape) for v in valids]
        valid = torch.stack(valids, 0).all(0)
        reasons: list[str] = []
        if not bool(valid.all()):
            flags = [v.reshape(-1).tolist() for v in valids]
            for entry in zip(*flags):
                if all(entry):
                    continue
                why = []
                for c, ok, it in zip(self.conditions, entry, reasons_by):
                    if not ok:
                        why.append(f"{c}: {next(it, 'invalid')}")
                reasons.append("; ".join(why))
        return Prediction(torch.cat(values, -2), valid, reasons)

    def log_likelihood_function(self, data, names: tuple[str, ...], fixed: dict):
        """The base's fused log-likelihood + gradient summed over conditions (see the base class), or None.

        Each condition's parameters are those of :meth:`condition_parameters`
        (a varied ``x`` is ``x exp(delta)`` or ``x + delta``; a per-condition
        one its own value), so its log-likelihood comes from the base's fused
        function of the same free names, and the chain rule carries its
        gradient to ``x``, ``delta`` and the own parameters. Offered where the
        base offers one for every condition, every varied parameter is free
        and every per-condition parameter is free in each condition (the
        CLI's fits); None otherwise (the generic autograd path).
        """
        names = tuple(names)
        self.per_condition(data)
        extra = set(self._extra_names(data))
        base_names = tuple(n for n in names if n not in extra)
        index = {n: i for i, n in enumerate(names)}
        base_fixed = {k: v for k, v in fixed.items() if k not in extra and not k.startswith("delta_")}
        plans = []
        for c in self.conditions:
            f = self.base.log_likelihood_function(data[c], base_names, base_fixed)
            if f is None:
                return None
            plan = []  # per base name: ("same", i) | ("own", i) | (mode, i_x, i_delta or None, fixed delta)
            for n in base_names:
                i = index[n]
                if c == self.reference:
                    plan.append(("same", i))
                elif n in self.vary:
                    key = self.delta_name(n, c)
                    if key in index:
                        plan.append((self.vary[n], i, index[key], 0.0))
                    elif key in fixed:
                        plan.append((self.vary[n], i, None, float(fixed[key])))
                    else:
                        plan.append(("same", i))
                elif n in self.per_condition():
                    own = f"{n}_{c}"
                    if own not in index:
                        return None
                    plan.append(("own", index[own]))
                else:
                    plan.append(("same", i))
            # a varied parameter held fixed whose difference is free: not a free name of the base here
            if c != self.reference and any(v not in index and self.delta_name(v, c) in index for v in self.vary):
                return None
            plans.append((f, plan))
        n_names = len(names)

        def condition_point(theta, plan):
            """The base's parameters of one condition ``(nb, n_base)`` and ``d x / d theta[source]`` per column."""
            x = np.empty((theta.shape[0], len(plan)))
            scale = np.ones_like(x)
            for j, step in enumerate(plan):
                if step[0] in ("same", "own"):
                    x[:, j] = theta[:, step[1]]
                else:
                    mode, i, k, d0 = step
                    d = theta[:, k] if k is not None else d0
                    if mode == "log":
                        e = np.exp(d)
                        x[:, j], scale[:, j] = theta[:, i] * e, e
                    else:
                        x[:, j] = theta[:, i] + d
            return x, scale

        def chain(g, x, scale, plan, out):
            """Add ``g`` (``(..., n_base)``: derivatives in the base's parameters) to ``out`` (``(..., n_names)``)."""
            for j, step in enumerate(plan):
                gj = g[..., j]
                if step[0] in ("same", "own"):
                    out[..., step[1]] += gj
                    continue
                mode, i, k, _ = step
                out[..., i] += gj * scale[..., j]
                if k is not None:
                    out[..., k] += gj * (x[..., j] if mode == "log" else 1.0)

        def log_likelihood(theta):
            theta = np.asarray(theta, dtype=np.float64).reshape(-1, n_names)
            total = np.zeros(theta.shape[0])
            grad = np.zeros_like(theta)
            for f, plan in plans:
                x, scale = condition_point(theta, plan)
                ll, g = f(x)
                total = total + ll
                chain(g, x, scale, plan, grad)
            with np.errstate(invalid="ignore"):
                grad = np.where(np.isfinite(total)[:, None], grad, 0.0)
            return total, grad

        parts = [getattr(f, "transformed_prediction_and_jacobian", None) for f, _ in plans]
        if all(p is not None for p in parts):
            n_channels = self._n_channels(data)

            def transformed_prediction_and_jacobian(theta):
                """The stacked Gaussian-target prediction (every condition's channels, ``(sum C * P,)``) and its
                Jacobian in ``names`` ``(sum C * P, n)``: the base's fused ones, chained through the differences
                (what variational Laplace needs, see :meth:`InverseProblem.gaussian_form`)."""
                theta = np.asarray(theta, dtype=np.float64).reshape(1, n_names)
                values, jacobians = [], []
                for (_, plan), part, n_ch in zip(plans, parts, n_channels):
                    x, scale = condition_point(theta, plan)
                    value, jac = part(x[0])
                    full = np.zeros((value.size, n_names))
                    chain(jac, x[0], scale[0], plan, full)
                    values.append(np.tile(value, n_ch))
                    jacobians.append(np.tile(full, (n_ch, 1)))
                return np.concatenate(values), np.concatenate(jacobians, 0)

            log_likelihood.transformed_prediction_and_jacobian = transformed_prediction_and_jacobian
        return log_likelihood

    def _parts(self, prediction: Prediction, data):
        return [Prediction(v, prediction.valid, []) for v in self._split(prediction.value, data)]

    def pointwise_log_likelihood(self, prediction: Prediction, params: dict, data) -> torch.Tensor:
        out = []
        for c, part in zip(self.conditions, self._parts(prediction, data)):
            out.append(self.base.pointwise_log_likelihood(part, self.condition_parameters(params, c), data[c]))
        shape = torch.broadcast_shapes(*(o.shape[:-2] for o in out))
        return torch.cat([o.expand(*shape, *o.shape[-2:]) for o in out], -2)

    def sample(self, prediction: Prediction, params: dict, data, generator: torch.Generator) -> torch.Tensor:
        out = []
        for c, part in zip(self.conditions, self._parts(prediction, data)):
            out.append(self.base.sample(part, self.condition_parameters(params, c), data[c], generator))
        shape = torch.broadcast_shapes(*(o.shape[:-2] for o in out))
        return torch.cat([o.expand(*shape, *o.shape[-2:]) for o in out], -2)

    def gaussian_target(self, data) -> GaussianTarget:
        """The conditions' targets stacked; one precision component per condition's noise parameter."""
        targets = [self.base.gaussian_target(data[c]) for c in self.conditions]
        own = set(self.per_condition(data))
        names: list[str] = []
        for c, t in zip(self.conditions, targets):
            for n in t.noise_parameters:
                key = f"{n}_{c}" if (n in own and c != self.reference) else n
                if key not in names:
                    names.append(key)
        sizes = [t.y.numel() for t in targets]
        total = sum(sizes)
        comps = torch.zeros((len(names), total), dtype=torch.float64)
        start = 0
        for c, t, size in zip(self.conditions, targets, sizes):
            for i, n in enumerate(t.noise_parameters):
                key = f"{n}_{c}" if (n in own and c != self.reference) else n
                comps[names.index(key), start : start + size] += t.precision_components[i]
            start += size
        n_ch = [int(t.y.shape[0]) for t in targets]

        def transform(value: torch.Tensor) -> torch.Tensor:
            parts = [t.transform(v) for t, v in zip(targets, self._split(value, data))]
            parts = [p.expand(*p.shape[:-2], n, p.shape[-1]) for p, n in zip(parts, n_ch)]
            shape = torch.broadcast_shapes(*(p.shape[:-2] for p in parts))
            return torch.cat([p.expand(*shape, *p.shape[-2:]) for p in parts], -2)

        return GaussianTarget(torch.cat([t.y for t in targets], 0), transform, tuple(names), comps, targets[0].space)

    def features(self, values: torch.Tensor, data) -> torch.Tensor:
        """The conditions' features concatenated, shape ``(*batch, sum of n_features)``."""
        out, start = [], 0
        for c, n in zip(self.conditions, self._n_channels(data)):
            out.append(self.base.features(values[..., start : start + n, :], data[c]))
            start += n
        return torch.cat(out, -1)

    # ------------------------------------------------------------ prior
    def default_prior(self, data, *, free=None) -> dict:
        """The base's default prior for the reference condition, plus per-condition and difference priors.

        See :meth:`joint_prior`.
        """
        self.check_data(data)
        return self.joint_prior(self.base.default_prior(data[self.reference], free=free), data)

    def joint_prior(self, spec: dict, data) -> dict:
        """Extend a single-condition prior spec (reference condition) to the joint problem.

        Per-condition parameters take the base observation's default prior
        for that condition's data (e.g. the noise level of its own
        recording), or the reference's distribution. Each difference gets
        ``Normal(0, sqrt(2) s)`` with ``s`` the prior sd of the varied
        parameter in its unconstrained coordinate, at most
        :data:`MAX_LOG_SD` for log ratios (module notes). Entries
        already in ``spec`` are kept.

        Raises
        ------
        ValueError
            A varied parameter has no distribution in ``spec`` (it is fixed
            or missing), or a log-scale difference of a parameter with a
            uniform prior reaching zero.
        """
        dists = dict(spec.get("distributions", {}))
        fixed = dict(spec.get("fixed", {}))
        units = dict(spec.get("units", {}))
        all_units = self.parameter_units(data)
        for p in self.per_condition(data):
            for c in self.others:
                key = f"{p}_{c}"
                if key in dists or key in fixed:
                    continue
                if p in fixed:
                    fixed[key] = fixed[p]
                elif p in dists:
                    own = self.base.default_prior(data[c]).get("distributions", {}).get(p)
                    dists[key] = dict(own if own is not None else dists[p])
                units[key] = all_units.get(key, "")
        for v, mode in self.vary.items():
            if v not in dists:
                raise ValueError(
                    f"vary: {v!r} must be a free parameter of the prior to differ between conditions "
                    f"(it is {'fixed' if v in fixed else 'not in the prior'})"
                )
            sd = _SQRT2 * _unconstrained_sd(v, dists[v], mode)
            if mode == "log":
                sd = min(sd, MAX_LOG_SD)
            for c in self.others:
                key = self.delta_name(v, c)
                if key not in dists and key not in fixed:
                    dists[key] = {"dist": "normal", "mean": 0.0, "sd": float(sd)}
                units[key] = all_units.get(key, "")
        return {"distributions": dists, "fixed": fixed, "units": units}

    # ---------------------------------------------------------- regimes
    @property
    def REGIMES(self) -> tuple[str, ...]:  # noqa: N802 (the Observation attribute, from the base)
        """The base observation's regime names: each condition is classified by them."""
        return tuple(getattr(self.base, "REGIMES", ()) or ())

    def regimes(self, params: dict) -> None:
        """None: the conditions have their own parameter values, so there is no one regime (see :meth:`regimes_by_part`)."""
        return None

    def regimes_by_part(self, params: dict) -> dict[str, torch.Tensor] | None:
        """Each condition's regime: the base's :meth:`~jrinfer.observation.Observation.regimes` of its parameters.

        Returns ``{condition: int64 codes (batch)}`` into :attr:`REGIMES`, or
        None when the base observation has no regimes.
        """
        out = {}
        for c in self.conditions:
            codes = self.base.regimes(self.condition_parameters(params, c))
            if codes is None:
                return None
            out[c] = codes
        return out

    def regime_context_by_part(self, data, metrics: dict) -> dict[str, dict]:
        """The base's regime context of each condition, from that condition's fit-quality metrics."""
        out = {}
        for c in self.conditions:
            own = {k[: -len(c) - 1]: v for k, v in metrics.items() if k.endswith(f"_{c}")}
            out[c] = self.base.regime_context(data[c], own) or {}
        return out

    # ---------------------------------------------------------- quality
    def goodness_of_fit(self, data, predicted: torch.Tensor, params: dict | None = None) -> FitQuality:
        """The base's fit quality per condition: metrics ``<metric>_<condition>``, warnings prefixed.

        For spectra also, per non-reference condition ``c``, the change of
        alpha-band power (:data:`ALPHA_POWER_BAND_HZ`, trapezoid over the
        grid, channels averaged) against the reference in the data and in the
        fit: ``alpha_power_ratio_data_<c>`` and ``alpha_power_ratio_fit_<c>``
        (the question a rest-vs-task fit is asked first).
        """
        metrics: dict = {}
        warns: list = []
        band_power: dict = {}
        for c, part in zip(self.conditions, self._split(predicted, data)):
            p = None if params is None else self.condition_parameters(params, c)
            fq = self.base.goodness_of_fit(data[c], part, p)
            metrics.update({f"{k}_{c}": v for k, v in fq.metrics.items()})
            warns.extend(f"{c}: {w}" for w in fq.warnings)
            freqs = getattr(data[c], "freqs", None)
            if freqs is not None:
                band_power[c] = (_band_power(freqs, data[c].power), _band_power(freqs, part))
        ref = self.reference
        if ref in band_power and all(x > 0 for x in band_power[ref]):
            for c in self.others:
                if c in band_power:
                    metrics[f"alpha_power_ratio_data_{c}"] = band_power[c][0] / band_power[ref][0]
                    metrics[f"alpha_power_ratio_fit_{c}"] = band_power[c][1] / band_power[ref][1]
        return FitQuality(metrics, warns)


#: The band whose power a fit of spectra compares between conditions (Hz): the conventional alpha band.
ALPHA_POWER_BAND_HZ = next((lo, hi) for name, lo, hi in EEG_BANDS_HZ if name == "alpha")
#: A fit's alpha-power change (condition / reference) more than this factor off the data's is said so.
ALPHA_CHANGE_TOLERANCE = 1.15


def _band_power(freqs, power, band=ALPHA_POWER_BAND_HZ) -> float:
    """Power in ``band`` of a spectrum ``(..., C, F)`` (channels averaged; trapezoid over the grid), data units x Hz."""
    f = torch.as_tensor(freqs, dtype=torch.float64).reshape(-1)
    pw = torch.as_tensor(power, dtype=torch.float64).detach()
    pw = pw.reshape(-1, f.numel()).mean(0)
    inside = (f >= band[0]) & (f <= band[1])
    if int(inside.sum()) < 2:
        return float("nan")
    return float(torch.trapezoid(pw[inside], f[inside]))


def _alpha_change_off(data_ratio: float, fit_ratio: float) -> float | None:
    """How far (%) a fit's alpha-power change is off the data's, where beyond :data:`ALPHA_CHANGE_TOLERANCE`; else None."""
    off = abs(math.log(fit_ratio / data_ratio))
    return 100 * (math.exp(off) - 1) if off > math.log(ALPHA_CHANGE_TOLERANCE) else None


def format_alpha_power(fit_quality: dict, reference: str, others) -> list[str]:
    """Lines ``alpha power (8-13 Hz), task / rest: data 0.256, fit 0.26`` from a fit's quality metrics ([] if none)."""
    lines = []
    lo, hi = ALPHA_POWER_BAND_HZ
    for c in others:
        d, f = fit_quality.get(f"alpha_power_ratio_data_{c}"), fit_quality.get(f"alpha_power_ratio_fit_{c}")
        if d is None or f is None or not (math.isfinite(d) and math.isfinite(f)):
            continue
        change = "lower" if d < 1 else "higher"
        off = _alpha_change_off(d, f)
        how = ("the parameters below say how the model makes it" if off is None else
               f"but the fit's change is {off:.0f} % off the data's: the parameter differences "
               "below describe the fitted change, not the data's")
        lines.append(f"alpha power ({lo:g}-{hi:g} Hz), {c} / {reference}: data {d:.3g}, fit {f:.3g} ({c} "
                     f"{abs(1 - d) * 100:.0f} % {change} in the data; {how})")
    return lines


def _unconstrained_sd(name: str, d: dict, mode: str) -> float:
    kind = d.get("dist")
    if kind == "lognormal" and mode == "log":
        return float(d["sd_log"])
    if kind == "normal" and mode == "additive":
        return float(d["sd"])
    if kind == "normal" and mode == "log":
        # a scale parameter with a normal prior (e.g. an evoked gain of either sign): its coefficient of variation
        return min(1.0, float(d["sd"]) / max(abs(float(d["mean"])), 1e-300)) if d["mean"] != 0 else 0.5
    if kind == "lognormal" and mode == "additive":
        return float(d["median"]) * float(d["sd_log"])
    if kind == "uniform":
        lo, hi = float(d["low"]), float(d["high"])
        if mode == "log":
            if lo <= 0:
                raise ValueError(
                    f"vary: a log-scale difference of {name!r} needs a prior on positive values; its uniform prior "
                    f"reaches {lo:g} (give delta_{name}_<condition> a prior with --prior)"
                )
            return math.log(hi / lo) / math.sqrt(12.0)
        return (hi - lo) / math.sqrt(12.0)
    raise ValueError(f"vary: cannot derive a difference prior from the prior of {name!r}: {d!r}")


def condition_effects(posterior, problem, *, interval: float = 0.90) -> dict:
    """Each condition difference with its posterior interval and its evidence.

    Parameters
    ----------
    posterior : Posterior
        A fit of ``problem`` (any backend).
    problem : InverseProblem
        With a :class:`ConditionObservation`.
    interval : float
        Central posterior probability of the reported interval (default 0.90).

    Returns
    -------
    dict
        ``{"<name>": {"<condition>": {...}}}`` per varied parameter and
        non-reference condition, with ``parameter`` (the ``delta_*`` name),
        ``scale`` (``"log"``: a log ratio, or ``"additive"``), ``mean``,
        ``sd``, ``lower``, ``upper`` (interval of the difference), ``ratio``,
        ``ratio_lower``, ``ratio_upper`` (``exp`` of the log ratio; ``None``
        for additive ones), ``reference_mean`` (posterior mean of the
        parameter in the reference condition, when free),
        ``log_bayes_factor`` (nats, "difference" against "no difference":
        ``-ΔF`` of Bayesian model reduction to ``delta = 0``),
        ``p_difference`` (posterior probability of a difference with equal
        prior odds, ``1 / (1 + exp(ΔF))``), ``evidence`` (Kass & Raftery's
        words), ``agreement`` (one sentence saying how the interval and the
        log Bayes factor relate for this difference: :data:`INTERVAL_VS_BF`)
        and ``bmr_from`` (``"gaussian posterior"`` when the backend
        gave one, else ``"gaussian fitted to the draws"``).

    Notes
    -----
    The differences have independent normal priors, so reducing one of them
    to zero changes the evidence by the Savage-Dickey ratio of its marginal:
    Bayesian model reduction (:func:`jrinfer.comparison.bayesian_model_reduction`,
    Friston & Penny 2011) of the one-dimensional marginal gives the same
    answer as of the full Gaussian. For sampling backends the marginal is
    the Gaussian with the draws' mean and variance (exact when the
    posterior is Gaussian).

    Raises
    ------
    ValueError
        The problem's observation is not a :class:`ConditionObservation`, or
        a difference is missing from the fit (a difference held fixed is
        reported as ``{"parameter", "scale", "fixed": value}``).
    """
    obs = problem.observation
    if not isinstance(obs, ConditionObservation):
        raise ValueError(f"condition_effects needs a problem with a ConditionObservation, got {type(obs).__name__}")
    interval = _checks.check_scalar("interval", interval, positive=True)
    if not interval < 1:
        raise ValueError(f"interval must be in (0, 1), got {interval}")
    names = list(posterior.names)
    draws = np.asarray(posterior.draws, dtype=float).reshape(-1, len(names))
    prior = problem.prior
    prior_mean, prior_cov = prior.gaussian_unconstrained()
    gaussian = posterior.mean_unconstrained is not None and posterior.cov_unconstrained is not None
    lo_q, hi_q = 0.5 - interval / 2, 0.5 + interval / 2
    out: dict = {}
    for v, mode in obs.vary.items():
        for c in obs.others:
            key = obs.delta_name(v, c)
            if key not in names and key in prior.fixed:  # held fixed by the user: nothing to infer
                out.setdefault(v, {})[c] = {"parameter": key, "scale": mode, "fixed": float(prior.fixed[key])}
                continue
            if key not in names:
                raise ValueError(f"the difference {key!r} is not a parameter of this fit")
            i = names.index(key)
            x = draws[:, i]
            if gaussian:
                m = float(posterior.mean_unconstrained[i])
                var = float(posterior.cov_unconstrained[i, i])
            else:
                m, var = float(x.mean()), float(x.var(ddof=1))
            # shrunk to the prior where the draws' variance exceeds it (sampling noise)
            log_bf = _reduce_to_zero([m], [[var]], [float(prior_mean[i])], [[float(prior_cov[i, i])]])
            lo, hi = float(np.quantile(x, lo_q)), float(np.quantile(x, hi_q))
            ref = names.index(v) if v in names else None
            out.setdefault(v, {})[c] = {
                "parameter": key,
                "scale": mode,
                "mean": float(x.mean()),
                "sd": float(x.std(ddof=1)) if x.size > 1 else 0.0,
                "lower": lo,
                "upper": hi,
                "interval": interval,
                "ratio": float(np.exp(np.median(x))) if mode == "log" else None,
                "ratio_lower": float(np.exp(lo)) if mode == "log" else None,
                "ratio_upper": float(np.exp(hi)) if mode == "log" else None,
                "reference_mean": None if ref is None else float(draws[:, ref].mean()),
                **_bf_record(log_bf),
                "agreement": _agreement(lo, hi, log_bf),
                "bmr_from": "gaussian posterior" if gaussian else "gaussian fitted to the draws",
            }
    return out


def _reduce_to_zero(mean, cov, prior_mean, prior_cov) -> float:
    """Log Bayes factor (nats) of the full model against the reduced model ``x = 0`` of a Gaussian block.

    ``mean (k,)``, ``cov (k, k)``: the (marginal) Gaussian posterior of the
    reduced parameters; ``prior_mean``, ``prior_cov``: their Gaussian prior,
    independent of every other parameter's. Bayesian model reduction to a
    point mass at 0 (Friston & Penny 2011, :func:`jrinfer.comparison.
    bayesian_model_reduction`); with a prior independent of the other
    parameters it needs only the block's marginal, and it equals the
    multivariate Savage-Dickey ratio ``log q(0) - log p(0)`` with the sign
    turned (exact for linear-Gaussian models). A posterior covariance wider
    than the prior in some direction (sampling noise of draws) is shrunk to
    the prior there first (:func:`_no_wider_than_prior`).
    """
    from jrinfer.comparison import bayesian_model_reduction

    m = np.asarray(mean, dtype=float).reshape(-1)
    k = m.size
    P = np.asarray(prior_cov, dtype=float).reshape(k, k)
    S, _ = _no_wider_than_prior(np.asarray(cov, dtype=float).reshape(k, k), P)
    t = lambda x: torch.as_tensor(np.asarray(x, dtype=float))  # noqa: E731
    _, _, dF = bayesian_model_reduction(t(m), t(S), t(np.asarray(prior_mean, dtype=float).reshape(-1)), t(P),
                                        torch.zeros(k, dtype=torch.float64), torch.zeros(k, k, dtype=torch.float64))
    return -float(dF)


def _no_wider_than_prior(cov: np.ndarray, prior_cov: np.ndarray) -> tuple[np.ndarray, bool]:
    """``cov (k, k)`` shrunk to ``prior_cov`` in the directions where it is wider; and whether it was.

    In prior-whitened coordinates ``W = L^-1 cov L^-T`` (``prior_cov = L L^T``)
    the eigenvalues above ``1 - 1e-9`` are set to that: a posterior cannot be
    wider than its prior (a wider one is sampling noise of draws, or a
    posterior from another prior). Returned unchanged (exactly) when no
    eigenvalue is that large.
    """
    S = 0.5 * (cov + cov.T)
    L = np.linalg.cholesky(prior_cov)
    Li = np.linalg.inv(L)
    W = Li @ S @ Li.T
    ev, U = np.linalg.eigh(0.5 * (W + W.T))
    if ev.max() <= 1.0 - 1e-9:
        return S, False
    W = (U * np.minimum(ev, 1.0 - 1e-9)) @ U.T
    S = L @ W @ L.T
    return 0.5 * (S + S.T), True


def _bf_record(log_bf: float) -> dict:
    return {
        "log_bayes_factor": log_bf,
        "p_difference": float(1.0 / (1.0 + math.exp(-log_bf))) if abs(log_bf) < 700 else float(log_bf > 0),
        "evidence": _words(log_bf),
    }


def no_difference(posterior, problem) -> dict | None:
    """The joint reduced model "no parameter differs between conditions" against the full model.

    Every free difference ``delta_<name>_<condition>`` is reduced to 0 at once
    by Bayesian model reduction of the full posterior (Friston & Penny 2011;
    ``_reduce_to_zero``), from the backend's Gaussian when it gave one,
    else from a Gaussian fitted to the draws (in the prior's unconstrained
    coordinates).

    Returns
    -------
    dict or None
        ``parameters`` (the differences reduced), ``log_bayes_factor`` (nats,
        "some difference" against "none at all": ``F_full - F_reduced``),
        ``p_difference`` (posterior probability that some parameter differs,
        equal prior odds), ``evidence`` (Kass & Raftery's words) and
        ``bmr_from``; None when every difference is held fixed.
    """
    obs = problem.observation
    if not isinstance(obs, ConditionObservation):
        raise ValueError(f"no_difference needs a problem with a ConditionObservation, got {type(obs).__name__}")
    block = delta_gaussian(posterior, problem)
    if block is None:
        return None
    log_bf = _reduce_to_zero(block["mean"], block["cov"], block["prior_mean"], block["prior_cov"])
    return {
        "parameters": block["parameters"],
        **_bf_record(log_bf),
        "bmr_from": block["from"],
    }


def delta_gaussian(posterior, problem) -> dict | None:
    """The Gaussian marginal of the free differences ``delta_*`` of a fit, and their prior.

    The block of the backend's Gaussian (variational Laplace) when it gave
    one, else a Gaussian fitted to the draws, in the prior's unconstrained
    coordinates (the differences' own: their priors are normal). It is what
    :func:`no_difference` reduces and what :func:`group_effects` averages;
    ``jrinfer fit --conditions`` stores it in ``summary.json``
    (``condition_effects.gaussian``).

    Returns
    -------
    dict or None
        ``parameters`` (the ``k`` free ``delta_*`` names), ``mean`` ``(k,)``,
        ``cov`` ``(k, k)``, ``prior_mean`` ``(k,)``, ``prior_cov`` ``(k, k)``
        (lists, JSON-ready) and ``from`` (``"gaussian posterior"`` or
        ``"gaussian fitted to the draws"``); None when every difference is
        held fixed.
    """
    obs = problem.observation
    if not isinstance(obs, ConditionObservation):
        raise ValueError(f"delta_gaussian needs a problem with a ConditionObservation, got {type(obs).__name__}")
    names = list(posterior.names)
    keys = [obs.delta_name(v, c) for v in obs.vary for c in obs.others if obs.delta_name(v, c) in names]
    if not keys:
        return None
    idx = [names.index(k) for k in keys]
    prior_mean, prior_cov = problem.prior.gaussian_unconstrained()
    gaussian = posterior.mean_unconstrained is not None and posterior.cov_unconstrained is not None
    if gaussian:
        m = np.asarray(posterior.mean_unconstrained, dtype=float)[idx]
        S = np.asarray(posterior.cov_unconstrained, dtype=float)[np.ix_(idx, idx)]
    else:
        theta = torch.as_tensor(np.asarray(posterior.draws, dtype=float).reshape(-1, len(names)))
        z = problem.prior.to_unconstrained(theta).numpy()[:, idx]
        m, S = z.mean(0), np.atleast_2d(np.cov(z, rowvar=False))
    return {
        "parameters": keys,
        "mean": [float(x) for x in m],
        "cov": [[float(x) for x in row] for row in S],
        "prior_mean": [float(x) for x in prior_mean.numpy()[idx]],
        "prior_cov": [[float(x) for x in row] for row in prior_cov.numpy()[np.ix_(idx, idx)]],
        "from": "gaussian posterior" if gaussian else "gaussian fitted to the draws",
    }


#: One line on how the interval of a difference and its log Bayes factor relate (printed and in the report).
INTERVAL_VS_BF = (
    "the interval says where the difference lies if there is one; the log BF weighs 'a difference' against 'none' "
    "and charges for the width of the difference's prior (Savage-Dickey: log BF = log prior density at 0 - log "
    "posterior density at 0), so an interval that excludes 0 (ratio 1) with |log BF| < 1 is a shift small for "
    "its prior: suggestive, not established"
)


def _agreement(lower: float, upper: float, log_bf: float) -> str:
    """How the interval ``[lower, upper]`` of a difference and its log Bayes factor (nats) relate, in words.

    "No difference" is 0 (a ratio of 1 for log-scale differences).
    """
    excludes = lower > 0.0 or upper < 0.0
    if excludes and log_bf >= 1.0:
        return "agree: the interval leaves out 'no difference' and the evidence favours a difference"
    if not excludes and log_bf <= -1.0:
        return "agree: the interval holds 'no difference' and the evidence favours none"
    if excludes:
        return (
            "differ: the interval leaves out 'no difference' but the evidence is "
            + ("weak" if log_bf > -1.0 else "for no difference")
            + " (a shift small for the width of its prior): suggestive, not established"
        )
    if log_bf >= 1.0:
        return "differ: the evidence favours a difference but the interval holds 'no difference': its size is uncertain"
    return "agree: neither the interval (holds 'no difference') nor the evidence (|log BF| < 1) establishes one"


def _summed_words(log_bf: float) -> str:
    """Kass & Raftery reading of a fixed-effects sum of subjects' log BFs: "every subject has its own difference"
    against "no subject has one" (not "no difference in any subject")."""
    from jrinfer.comparison import evidence_strength

    strength = evidence_strength(log_bf)
    if strength is None:
        return "inconclusive"
    return (f"{strength} evidence that every subject has a difference of its own" if log_bf > 0 else
            f"{strength} evidence against a difference in every subject (some may still have one)")


def _words(log_bf: float) -> str:
    """Kass & Raftery (1995) reading of a log Bayes factor (nats) for a difference."""
    from jrinfer.comparison import evidence_strength

    strength = evidence_strength(log_bf)
    if strength is None:
        return "inconclusive"
    return f"{strength} evidence for {'a difference' if log_bf > 0 else 'no difference'}"


def format_effects(effects: dict, reference: str, joint: dict | None = None) -> list[str]:
    """Lines of text for the printed summary of :func:`condition_effects` (first: :func:`no_difference`'s)."""
    lines = []
    if joint is not None:
        lines.append(
            f"  does any parameter differ? 'none differs' (all {len(joint['parameters'])} difference(s) = 0) vs the "
            f"full model: log BF {joint['log_bayes_factor']:+.2f} for some difference, P(some difference) "
            f"{joint['p_difference']:.2f} ({joint['evidence']})"
        )
    lines += [
        f"  condition effects (against {reference}; log BF > 0 favours a difference):",
        f"    (interval vs log BF: {INTERVAL_VS_BF})",
    ]
    for v, per in effects.items():
        for c, e in per.items():
            if "fixed" in e:
                lines.append(f"    {v:>14s}: {c} difference held fixed at {e['fixed']:g} ({e['parameter']})")
                continue
            pct = round(100 * e["interval"])
            if e["scale"] == "log":
                what = (
                    f"{c}/{reference} ratio {e['ratio']:.3g} [{e['ratio_lower']:.3g}, {e['ratio_upper']:.3g}] ({pct} %)"
                )
            else:
                what = f"{c}-{reference} difference {e['mean']:+.3g} [{e['lower']:+.3g}, {e['upper']:+.3g}] ({pct} %)"
            lines.append(
                f"    {v:>14s}: {what}, log BF {e['log_bayes_factor']:+.2f}, "
                f"P(difference) {e['p_difference']:.2f} ({e['evidence']})"
            )
            if e.get("agreement", "").startswith("differ"):
                lines.append(f"    {'':>14s}  interval and log BF {e['agreement']}")
    return lines


# --------------------------------------------------------------------------- #
# Group level: condition effects over subjects
# --------------------------------------------------------------------------- #
#: Fit statuses whose posteriors :func:`group_effects` uses (any other: the backend failed, the fit is left out).
USABLE_STATUS = ("converged", "warning")
#: Significance level of the random-effects t-test's verdict.
RFX_ALPHA = 0.05
#: Below this many subjects the random-effects test is said to have little power.
FEW_SUBJECTS = 10


def group_effects(fits, *, labels=None, interval: float = 0.90) -> dict:
    """Group-level condition effects over subjects: fixed effects (BPA) and random effects (summary statistics).

    Parameters
    ----------
    fits : sequence
        One element per subject, each a fit folder written by ``jrinfer fit
        A B --conditions ... --vary ...`` (or by ``jrinfer fit-many`` with
        ``--conditions``: a row's folder; ``summary.json`` is read) or a
        ``(Posterior, InverseProblem)`` pair of a fit of a
        :class:`ConditionObservation`. Every subject must have the same
        conditions, the same free differences and the same prior on them.
    labels : sequence of str, optional
        Subject names (default: the folders' names, or ``subject1``, ...).
    interval : float
        Central probability of the group intervals (default 0.90). The
        subjects' intervals are those of their fits (0.90 by default).

    Returns
    -------
    dict
        ``subjects`` (labels used), ``left_out`` (``[{"subject", "reason"}]``:
        failed fits, fits whose status is not in :data:`USABLE_STATUS`, fits
        that are not of conditions), ``caveats`` (subjects used whose status
        is ``warning``, with why), ``reference``, ``conditions``,
        ``interval``, ``notes`` (what fixed and random effects assume),
        ``headline`` (one sentence per difference where fixed and random
        effects disagree, or the subjects do), ``joint`` (every difference
        at once: ``bpa_log_bayes_factor``, ``fixed_effects_log_bf``) and
        ``effects``: ``{name: {condition: {...}}}`` with ``parameter``,
        ``scale`` (``"log"``: log ratios, or ``"additive"``), ``subjects``
        (each subject's posterior ``mean``, ``lower``, ``upper``,
        ``log_bayes_factor``), ``bpa`` (``mean``, ``sd``, ``lower``,
        ``upper``, ``ratio*`` for log-scale differences,
        ``log_bayes_factor`` of one shared difference against none,
        ``p_difference``, ``evidence``), ``fixed_effects_log_bf`` (the sum of
        the subjects' log Bayes factors) and ``fixed_effects_evidence``,
        ``random_effects`` (``n``, ``mean``, ``sd``, ``t``, ``df``, ``p``,
        ``lower``, ``upper``, ``n_positive``/``n_negative`` subjects' means,
        ``n_above``/``n_below`` subjects' intervals excluding 0),
        ``verdict`` (``"agree"``, ``"disagree"``, ``"fixed effects only"`` or
        ``"none"``) and ``headline`` (one sentence). Differences are in the
        unconstrained coordinate of the fit (log ratios, or additive).

    Notes
    -----
    **Fixed effects**: every subject has the same difference. Bayesian
    parameter averaging (Kasess et al. 2010, "Multi-subject analyses with
    dynamic causal modeling", NeuroImage 49:3065) gives its posterior from
    the subjects' Gaussian posteriors ``N(mu_i, Sigma_i)`` of the differences
    (their joint marginal, :func:`delta_gaussian`) and the common prior
    ``N(mu_0, Sigma_0)``: each subject's likelihood is
    ``q_i(delta) / p(delta)``, so the posterior of a shared difference has
    precision ``Pi = sum_i Pi_i - (N - 1) Pi_0`` and mean
    ``Pi^-1 (sum_i Pi_i mu_i - (N - 1) Pi_0 mu_0)`` (exact for
    Gaussian likelihoods; a subject whose posterior is wider than the prior
    in some direction, sampling noise of draws, adds no information there).
    Its
    ``log_bayes_factor`` weighs one shared difference against none
    (Savage-Dickey on the averaged posterior). The fixed-effects group log
    Bayes factor of Stephan et al. (2009, "Bayesian model selection for
    group studies", NeuroImage 46:1004; 2010, "Ten simple rules for dynamic
    causal modeling", NeuroImage 49:3099) is the sum of the subjects' log
    Bayes factors: "every subject has a difference (its own)" against "no
    subject has one".

    **Random effects** (summary statistics; Stephan et al. 2010, rule on
    group studies): the subjects' posterior means of each difference are
    treated as draws from the population, and their mean is tested against
    0 by a one-sample t-test (``scipy.stats.ttest_1samp``), with its
    ``interval`` confidence interval. With few subjects the test has little
    power (``notes``); with one there is none.

    Raises
    ------
    ValueError
        ``fits`` is empty or holds something else; the subjects' conditions,
        differences or difference priors differ; no fit is usable (the
        reasons are given).
    """
    if isinstance(fits, (str, bytes, os.PathLike)) or not isinstance(fits, Sequence) or len(fits) == 0:
        raise ValueError("fits: expected a non-empty sequence of fit folders or (Posterior, InverseProblem) pairs, "
                         f"got {fits!r}")
    interval = _checks.check_scalar("interval", interval, positive=True)
    if not interval < 1:
        raise ValueError(f"interval must be in (0, 1), got {interval}")
    if labels is None:
        labels = [Path(f).name if isinstance(f, (str, os.PathLike)) else f"subject{i + 1}" for i, f in enumerate(fits)]
    labels = [str(x) for x in labels]
    if len(labels) != len(fits):
        raise ValueError(f"labels: expected one per fit ({len(fits)}), got {len(labels)}")
    subjects, left_out = [], []
    for i, (fit, label) in enumerate(zip(fits, labels)):
        if isinstance(fit, (str, os.PathLike)):
            record = _subject_from_folder(Path(fit))
        elif isinstance(fit, tuple) and len(fit) == 2:
            record = _subject_from_fit(*fit, interval=interval)
        else:
            raise ValueError(f"fits[{i}]: expected a fit folder (jrinfer fit A B --conditions ... --out DIR) or a "
                             f"(Posterior, InverseProblem) pair, got {type(fit).__name__}")
        if isinstance(record, str):
            left_out.append({"subject": label, "reason": record})
        else:
            subjects.append({**record, "subject": label})
    if not subjects:
        why = "; ".join(f"{x['subject']}: {x['reason']}" for x in left_out)
        raise ValueError(f"fits: no fit can be used for group effects ({why})")
    first = subjects[0]
    keys = first["gaussian"]["parameters"]
    pm0 = np.asarray(first["gaussian"]["prior_mean"], dtype=float)
    P0 = np.asarray(first["gaussian"]["prior_cov"], dtype=float)
    for s in subjects[1:]:
        g = s["gaussian"]
        if (s["reference"], s["conditions"]) != (first["reference"], first["conditions"]) or g["parameters"] != keys:
            raise ValueError(
                f"fits: every subject needs the same conditions and differences; {first['subject']} has "
                f"{first['conditions']} with {keys}, {s['subject']} has {s['conditions']} with {g['parameters']}"
            )
        if not (np.allclose(g["prior_mean"], pm0, rtol=1e-9, atol=1e-12)
                and np.allclose(g["prior_cov"], P0, rtol=1e-9, atol=1e-15)):
            raise ValueError(
                f"fits: Bayesian parameter averaging needs one prior on the differences for every subject; "
                f"{s['subject']}'s differs from {first['subject']}'s (sd "
                f"{np.sqrt(np.diag(g['prior_cov'])).round(4).tolist()} vs {np.sqrt(np.diag(P0)).round(4).tolist()}): "
                "fit them with the same --vary and --prior"
            )
    n = len(subjects)
    # fixed effects: Bayesian parameter averaging of the joint Gaussian of the differences
    mean_g, cov_g, wider = _bpa([np.asarray(s["gaussian"]["mean"], dtype=float) for s in subjects],
                                [np.asarray(s["gaussian"]["cov"], dtype=float) for s in subjects], pm0, P0)
    shrunk = [s["subject"] for s, w in zip(subjects, wider) if w]
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + interval / 2)
    reference, conditions = first["reference"], first["conditions"]
    effects: dict = {}
    headline = []
    for v, per in first["effects"].items():
        for c, e0 in per.items():
            key = e0.get("parameter")
            if key not in keys:  # held fixed in every subject (checked equal above)
                continue
            j = keys.index(key)
            scale = e0["scale"]
            m, sd = float(mean_g[j]), float(math.sqrt(cov_g[j, j]))
            lo, hi = m - z * sd, m + z * sd
            log_bf = _reduce_to_zero([m], [[sd * sd]], [pm0[j]], [[P0[j, j]]])
            bpa = {"mean": m, "sd": sd, "lower": lo, "upper": hi,
                   "ratio": math.exp(m) if scale == "log" else None,
                   "ratio_lower": math.exp(lo) if scale == "log" else None,
                   "ratio_upper": math.exp(hi) if scale == "log" else None,
                   **_bf_record(log_bf)}
            rows = []
            for s in subjects:
                e = s["effects"][v][c]
                rows.append({"subject": s["subject"], "mean": float(e["mean"]), "lower": float(e["lower"]),
                             "upper": float(e["upper"]), "interval": float(e.get("interval", interval)),
                             "log_bayes_factor": float(e["log_bayes_factor"]),
                             "gaussian_mean": float(s["gaussian"]["mean"][j]),
                             "gaussian_sd": float(math.sqrt(s["gaussian"]["cov"][j][j]))})
            rfx = _random_effects([r["mean"] for r in rows], [r["lower"] for r in rows], [r["upper"] for r in rows],
                                  interval, [r["log_bayes_factor"] for r in rows])
            fixed_bf = float(sum(r["log_bayes_factor"] for r in rows))
            verdict, sentence = _group_verdict(v, c, reference, scale, bpa, rfx, interval, rows,
                                               {x["subject"] for x in subjects if x["status"] != "converged"})
            effects.setdefault(v, {})[c] = {
                "parameter": key, "scale": scale, "subjects": rows, "bpa": bpa,
                "fixed_effects_log_bf": fixed_bf, "fixed_effects_evidence": _summed_words(fixed_bf),
                "random_effects": rfx, "verdict": verdict, "headline": sentence,
            }
            if verdict == "disagree":
                headline.append(f"DISAGREE: {sentence}")
            elif "the group claim is that subject's" in sentence:
                headline.append(f"ONE SUBJECT: {sentence}")
    joint_bpa = _reduce_to_zero(mean_g, cov_g, pm0, P0)
    joint_subjects = [s["no_difference"]["log_bayes_factor"] for s in subjects if s.get("no_difference")]
    joint = {
        "parameters": list(keys),
        "bpa_log_bayes_factor": joint_bpa,
        "bpa_evidence": _words(joint_bpa),
        "fixed_effects_log_bf": float(sum(joint_subjects)) if len(joint_subjects) == n else None,
        "fixed_effects_evidence": _summed_words(float(sum(joint_subjects))) if len(joint_subjects) == n else None,
        # each subject's own "some difference vs none", so that a sum carried by one subject reads as such
        "subjects": {s["subject"]: s["no_difference"]["log_bayes_factor"] for s in subjects if s.get("no_difference")},
    }
    notes = [
        "fixed effects (Bayesian parameter averaging, summed log Bayes factors) assume every subject has the same "
        "difference; random effects (the subjects' posterior means, one-sample t-test) let it vary between subjects "
        "and ask whether its population mean differs from 0",
        "BPA's interval narrows about as 1/sqrt(N) with more subjects: it is the posterior of one shared difference, "
        "not a statement about how much subjects vary",
        "log BF of BPA: one shared difference vs none (Savage-Dickey on the averaged posterior); summed log BF: every "
        "subject has a difference of its own vs no subject has one",
    ]
    if n < 2:
        notes.append("one subject: no random-effects test is possible; the fixed effects are that subject's own")
    elif n < FEW_SUBJECTS:
        notes.append(
            f"with N = {n} subjects ({n - 1} degree(s) of freedom) the random-effects t-test has little power: "
            f"p >= {RFX_ALPHA:g} is not evidence of no difference, and fixed effects hold only if every subject "
            "has the same difference"
        )
    if shrunk:
        notes.append(f"the posterior of {', '.join(shrunk)} was wider than the prior in some direction (sampling "
                     "noise of draws): it adds no information there to the average")
    caveats = [f"{s['subject']}: fit status {s['status']}: {s['status_message']}" for s in subjects
               if s["status"] != "converged"]
    # what changed in the data, subject by subject, beside what the fits make of it (spectra: alpha-band power)
    alpha = {}
    for c in conditions[1:]:
        rows = [{"subject": s["subject"], "data": s["fit_quality"].get(f"alpha_power_ratio_data_{c}"),
                 "fit": s["fit_quality"].get(f"alpha_power_ratio_fit_{c}")} for s in subjects]
        if all(r["data"] is not None and r["fit"] is not None for r in rows):
            alpha[c] = rows
    return {
        "method": "fixed effects: Bayesian parameter averaging (Kasess et al. 2010) and summed log Bayes factors "
                  "(Stephan et al. 2009, 2010); random effects: summary statistics, one-sample t-test "
                  "(Stephan et al. 2010)",
        "reference": reference,
        "conditions": list(conditions),
        "interval": interval,
        "n_subjects": n,
        "subjects": [s["subject"] for s in subjects],
        "left_out": left_out,
        "caveats": caveats,
        "headline": headline,
        "notes": notes,
        "joint": joint,
        "alpha_power": alpha,
        "effects": effects,
    }


def _subject_from_folder(folder):
    """A subject's record from a fit folder, or the reason it cannot be used (str)."""
    summary = folder / "summary.json"
    if not summary.is_file():
        result = folder / "result.json"  # a fit-many row that ended in an error writes no summary
        if result.is_file():
            row = json.loads(result.read_text(encoding="utf-8"))
            if row.get("status") != "ok":
                return f"the fit failed: {row.get('error') or 'no message'}"
        return f"no summary.json in {folder} (not a jrinfer fit folder)"
    s = json.loads(summary.read_text(encoding="utf-8"))
    ce = s.get("condition_effects")
    if not ce:
        return "not a fit of conditions (summary.json has no condition_effects; fit with --conditions and --vary)"
    if s.get("status") not in USABLE_STATUS:
        return f"fit status {s.get('status')}: {s.get('status_message') or 'no message'}"
    if not ce.get("gaussian"):
        return ("summary.json has no condition_effects.gaussian (a fit by an earlier jrinfer, or every difference "
                "held fixed): fit it again")
    return {"status": s["status"], "status_message": s.get("status_message") or "", "effects": ce["effects"],
            "fit_quality": s.get("fit_quality") or {},
            "no_difference": ce.get("no_difference"), "gaussian": ce["gaussian"], "reference": ce["reference"],
            "conditions": list(ce["conditions"])}


def _subject_from_fit(posterior, problem, *, interval):
    """A subject's record from a ``(Posterior, InverseProblem)`` pair, or the reason it cannot be used (str)."""
    obs = getattr(problem, "observation", None)
    if not isinstance(obs, ConditionObservation):
        raise ValueError(f"fits: a (Posterior, InverseProblem) pair needs a problem with a ConditionObservation, got "
                         f"{type(obs).__name__}")
    if posterior.status not in USABLE_STATUS:
        return f"fit status {posterior.status}: {posterior.status_message or 'no message'}"
    gaussian = delta_gaussian(posterior, problem)
    if gaussian is None:
        return "every difference is held fixed"
    return {"status": posterior.status, "status_message": posterior.status_message or "",
            "fit_quality": dict(posterior.fit_quality),
            "effects": condition_effects(posterior, problem, interval=interval),
            "no_difference": no_difference(posterior, problem), "gaussian": gaussian,
            "reference": obs.reference, "conditions": list(obs.conditions)}


def _bpa(means, covs, prior_mean, prior_cov) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """Bayesian parameter averaging (Kasess et al. 2010) of Gaussian posteriors under one Gaussian prior.

    ``means``: ``N`` arrays ``(k,)``; ``covs``: ``N`` arrays ``(k, k)``;
    ``prior_mean (k,)``, ``prior_cov (k, k)``. Returns the mean ``(k,)``
    and covariance ``(k, k)`` of ``prod_i q_i(x) / p(x)^(N-1)``: precision
    ``P_0 + sum_i (P_i - P_0) = sum_i P_i - (N - 1) P_0``, mean
    ``P^-1 (P_0 m_0 + sum_i (P_i m_i - P_0 m_0))``, and per subject whether its
    posterior was wider than the prior in some direction. Each subject's
    implied likelihood (precision ``P_i - P_0``, information ``P_i m_i -
    P_0 m_0``) is kept as it is unless it has a direction of non-positive
    precision (a posterior wider than the prior there: sampling noise of
    draws); in such directions (prior-whitened eigenvectors) the subject
    carries no information and both are set to 0 there.
    """
    m0 = np.asarray(prior_mean, dtype=float)
    P0 = np.linalg.inv(prior_cov)
    L = np.linalg.cholesky(prior_cov)  # whitening: x = m0 + L u, prior precision of u is I
    prec, h = P0.copy(), P0 @ m0
    wider = []
    for m, S in zip(means, covs):
        Pi = np.linalg.inv(0.5 * (S + S.T))
        lam, info = Pi - P0, Pi @ m - P0 @ m0
        lam_w = L.T @ lam @ L
        ev, V = np.linalg.eigh(0.5 * (lam_w + lam_w.T))
        keep = ev > 1e-9
        wider.append(not bool(keep.all()))
        if not keep.all():  # no information where the posterior is as wide as the prior or wider
            Vk = V[:, keep]
            Li = np.linalg.inv(L)
            lam = Li.T @ (Vk * ev[keep]) @ Vk.T @ Li
            info = Li.T @ (Vk @ (Vk.T @ (L.T @ info)))
        prec = prec + lam
        h = h + info
    prec = 0.5 * (prec + prec.T)
    Lp = np.linalg.cholesky(prec)  # positive definite: the prior's precision plus PSD likelihoods
    Lpi = np.linalg.inv(Lp)
    cov = Lpi.T @ Lpi
    cov = 0.5 * (cov + cov.T)
    return cov @ h, cov, wider


#: log Bayes factor (nats) from which a subject's or the average's difference counts as established (with an interval
#: that leaves out 0): the single fit's rule (below it, "suggestive, not established"; :func:`_agreement`).
ESTABLISHED_LOG_BF = 1.0


def _random_effects(means, lowers, uppers, interval: float, log_bfs=None) -> dict:
    """Summary-statistics random effects of the subjects' posterior means (Stephan et al. 2010).

    Mean, SD (``ddof=1``), one-sample t-test against 0 (``scipy.stats.ttest_1samp``)
    with its ``interval`` confidence interval, the numbers of subjects
    whose means are positive/negative and whose intervals lie above/below 0,
    and of those (``n_above_established``, ``n_below_established``) whose log
    Bayes factor (``log_bfs``) is at least :data:`ESTABLISHED_LOG_BF` too.
    """
    m = np.asarray(means, dtype=float)
    lo, hi = np.asarray(lowers, dtype=float), np.asarray(uppers, dtype=float)
    bf = np.full(m.shape, np.inf) if log_bfs is None else np.asarray(log_bfs, dtype=float)
    n = int(m.size)
    out = {"n": n, "means": m.tolist(), "mean": float(m.mean()), "sd": None, "t": None, "df": None, "p": None,
           "lower": None, "upper": None, "n_positive": int((m > 0).sum()), "n_negative": int((m < 0).sum()),
           "n_above": int((lo > 0).sum()), "n_below": int((hi < 0).sum()),
           "n_above_established": int(((lo > 0) & (bf >= ESTABLISHED_LOG_BF)).sum()),
           "n_below_established": int(((hi < 0) & (bf >= ESTABLISHED_LOG_BF)).sum()), "test": None}
    if n < 2:
        out["test"] = "one subject: no test"
        return out
    from scipy import stats

    sd = float(m.std(ddof=1))
    out["sd"], out["df"] = sd, n - 1
    if sd == 0.0:
        out["test"] = "every subject's mean is the same: no test"
        return out
    res = stats.ttest_1samp(m, 0.0)
    half = float(stats.t.ppf(0.5 + interval / 2, n - 1)) * sd / math.sqrt(n)
    out.update(t=float(res.statistic), p=float(res.pvalue), lower=out["mean"] - half, upper=out["mean"] + half,
               test="one-sample t-test against 0 (two-sided)")
    return out


def _direction(sign: int, condition: str, reference: str) -> str:
    return f"{'higher' if sign > 0 else 'lower'} in {condition} than in {reference}"


def _group_verdict(name, condition, reference, scale, bpa, rfx, interval, rows=(), caveated=()) -> tuple[str, str]:
    """Whether fixed effects (BPA) and random effects (and the subjects) agree on a difference; one sentence.

    ``rows``: the subjects' records (names, intervals, log BFs), to name who carries a claim; ``caveated``: subjects
    whose fits carry a status warning (said beside their name).
    """
    pct = round(100 * interval)
    if scale == "log":
        est = f"{condition}/{reference} ratio {bpa['ratio']:.3g} [{bpa['ratio_lower']:.3g}, {bpa['ratio_upper']:.3g}]"
    else:
        est = f"{condition}-{reference} difference {bpa['mean']:+.3g} [{bpa['lower']:+.3g}, {bpa['upper']:+.3g}]"
    est += f" ({pct} %), log BF {bpa['log_bayes_factor']:+.2f}"  # one shared difference vs none
    # the average's direction counts where its interval leaves out 0 and its evidence favours a difference (the
    # single fit's rule); an interval alone is suggestive, not established
    bpa_side = 1 if bpa["lower"] > 0 else -1 if bpa["upper"] < 0 else 0
    bpa_dir = bpa_side if bpa["log_bayes_factor"] >= ESTABLISHED_LOG_BF else 0
    n, p = rfx["n"], rfx["p"]
    test = f"t({rfx['df']}) = {rfx['t']:.2f}, p = {p:.3g}" if p is not None else (rfx["test"] or "no test")
    rtest = f"random effects {test}"
    sig = p is not None and p < RFX_ALPHA
    rfx_dir = (1 if rfx["mean"] > 0 else -1) if sig else 0
    up, down = rfx["n_above"], rfx["n_below"]
    up_e, down_e = rfx.get("n_above_established", up), rfx.get("n_below_established", down)
    tag = f"{name} ({condition} vs {reference})"
    suggestive = up + down - up_e - down_e
    s_up, s_down = up - up_e, down - down_e
    tail = (f"; {suggestive} more subject(s)' intervals leave out 0 ({s_up} above, {s_down} below) with log BF < "
            f"{ESTABLISHED_LOG_BF:g}: suggestive, not established" if suggestive else "")

    def carriers(sign):
        """The subjects whose difference is established on ``sign``'s side, with their log BF and any caveat."""
        out = []
        for r in rows:
            side = 1 if r["lower"] > 0 else -1 if r["upper"] < 0 else 0
            if side == sign and r["log_bayes_factor"] >= ESTABLISHED_LOG_BF:
                warn = "; its fit has a status warning" if r["subject"] in caveated else ""
                out.append(f"{r['subject']} (log BF {r['log_bayes_factor']:+.2f}{warn})")
        return ", ".join(out)
    if up_e and down_e:
        return "disagree", (
            f"{tag}: the subjects disagree: in {up_e} subject(s) the difference is established above 0 and in "
            f"{down_e} below (interval leaves out 0, log BF >= {ESTABLISHED_LOG_BF:g}), so it is not shared; the "
            f"fixed-effects average (BPA {est}) mixes opposite effects and is not the difference every subject shows "
            f"({rtest}){tail}"
        )
    if bpa_side and not bpa_dir:
        established = (f"{up_e + down_e} of {n} subject(s) show an established difference "
                       f"({up_e} above 0, {down_e} below){tail}")
        return "none", (
            f"{tag}: not established: the fixed-effects interval leaves out 0 (BPA {est}) but its evidence does "
            f"not favour a difference (log BF < {ESTABLISHED_LOG_BF:g}): suggestive at most; {established} "
            f"({rtest})"
        )
    if bpa_dir:
        same_e = up_e if bpa_dir > 0 else down_e
        opposite_e = down_e if bpa_dir > 0 else up_e
        opposite_m = rfx["n_negative"] if bpa_dir > 0 else rfx["n_positive"]
        against = (f"; {opposite_m} subject(s)' posterior mean(s) point the other way, without evidence" if opposite_m
                   else "")
        if opposite_e or (sig and rfx_dir != bpa_dir):
            return "disagree", (
                f"{tag}: fixed effects say {_direction(bpa_dir, condition, reference)} (BPA {est}), but the difference "
                f"is established the other way in {opposite_e} subject(s) (and this way in {same_e} of {n}): the "
                f"average is carried by the most precise subject(s), not shared by all ({rtest})"
            )
        if sig:
            return "agree", (f"{tag}: fixed and random effects agree: {_direction(bpa_dir, condition, reference)} "
                             f"(BPA {est}; {rtest}; established in {same_e} of {n} subjects{tail}{against})")
        return "fixed effects only", (
            f"{tag}: fixed effects say {_direction(bpa_dir, condition, reference)} (BPA {est}), established in "
            f"{same_e} of {n} subject(s){tail}{against}; random effects do not establish it "
            f"({test}{'; few subjects: little power' if n < FEW_SUBJECTS else ''}): with fixed effects carried by "
            f"{carriers(bpa_dir) or 'no subject alone'}, the group claim is that subject's, not the group's"
            if same_e <= 1 else
            f"{tag}: fixed effects say {_direction(bpa_dir, condition, reference)} (BPA {est}), established in "
            f"{same_e} of {n} subjects{tail}{against}; random effects do not establish it "
            f"({test}{'; few subjects: little power' if n < FEW_SUBJECTS else ''})"
        )
    if sig:
        return "disagree", (f"{tag}: random effects say {_direction(rfx_dir, condition, reference)} ({test}) but the "
                            f"fixed-effects interval holds no difference (BPA {est})")
    some = (f"; yet in {up_e + down_e} of {n} subjects a difference is established ({up_e} above 0, {down_e} "
            f"below): a difference in some subjects, not shared by the group{tail}" if up_e + down_e else
            f"; {suggestive} of {n} subjects' intervals leave out 0 ({s_up} above, {s_down} below) with log BF < "
            f"{ESTABLISHED_LOG_BF:g}: suggestive, not established" if suggestive else "")
    return "none", (f"{tag}: neither fixed effects (BPA {est}, holds no difference) nor random effects "
                    f"({test}) show a difference{some}")


def format_group_effects(group: dict) -> list[str]:
    """Lines of text for the printed summary of :func:`group_effects` (disagreements first)."""
    pct = round(100 * group["interval"])
    ref, n = group["reference"], group["n_subjects"]
    lines = [f"group effects against {ref} over {n} subject(s) ({', '.join(group['subjects'])}); left out: "
             + ("; ".join(f"{x['subject']} ({x['reason']})" for x in group["left_out"]) or "none")]
    for h in group["headline"]:
        lines.append(f"  {h}")
    for c in group["caveats"]:
        lines.append(f"  caveat: {c}")
    lo, hi = ALPHA_POWER_BAND_HZ
    for c, rows in (group.get("alpha_power") or {}).items():
        each = ", ".join(f"{r['subject']} {r['data']:.3g} ({r['fit']:.3g})" for r in rows)
        by = ", ".join(f"{100 * (1 - r['data']):.0f} %" for r in rows)  # negative: higher
        offs = [(r["subject"], _alpha_change_off(r["data"], r["fit"])) for r in rows]
        off = "".join(f"; {who}'s fit is {pct:.0f} % off its data" for who, pct in offs if pct is not None)
        lines.append(f"  alpha power ({lo:g}-{hi:g} Hz), {c} / {ref}, data (fit): {each}; in the data {c} is lower in "
                     f"{sum(r['data'] < 1 for r in rows)} of {len(rows)} subjects (by {by}){off}")
    j = group["joint"]
    fe = j["fixed_effects_log_bf"]
    own = j.get("subjects") or {}
    strong = [k for k, v in own.items() if v >= ESTABLISHED_LOG_BF]
    carried = (f"; carried by {strong[0]} ({own[strong[0]]:+.2f}; the others "
               + ", ".join(f"{k} {v:+.2f}" for k, v in own.items() if k != strong[0]) + ")"
               if len(strong) == 1 and len(own) > 1 else "")
    lines.append(
        f"  does any parameter differ? 'none differs' (all {len(j['parameters'])} difference(s) = 0) against the "
        f"full model: BPA log BF {j['bpa_log_bayes_factor']:+.2f} for one shared difference ({j['bpa_evidence']})"
        + (f"; summed subjects' log BF {fe:+.2f} ({j['fixed_effects_evidence']})" if fe is not None else "")
        + carried
    )
    for v, per in group["effects"].items():
        for c, e in per.items():
            b, r = e["bpa"], e["random_effects"]
            lines.append(f"  {v}: [{e['verdict']}] {e['headline']}")
            if e["scale"] == "log":
                subj = ", ".join(f"{s['subject']} {math.exp(s['mean']):.3g} [{math.exp(s['lower']):.3g}, "
                                 f"{math.exp(s['upper']):.3g}]" for s in e["subjects"])
                lines.append(f"      subjects ({c}/{ref} ratio, exp of the mean log ratio): {subj}")
            else:
                subj = ", ".join(f"{s['subject']} {s['mean']:+.3g} [{s['lower']:+.3g}, {s['upper']:+.3g}]"
                                 for s in e["subjects"])
                lines.append(f"      subjects ({c}-{ref}): {subj}")
            lines.append(
                f"      fixed effects: BPA {b['mean']:+.3g} [{b['lower']:+.3g}, {b['upper']:+.3g}] ({pct} %), log BF "
                f"{b['log_bayes_factor']:+.2f} for one shared difference; summed subjects' log BF "
                f"{e['fixed_effects_log_bf']:+.2f} ({e['fixed_effects_evidence']})"
            )
            if r["p"] is not None:
                lines.append(
                    f"      random effects: mean {r['mean']:+.3g} (SD {r['sd']:.3g}), t({r['df']}) = {r['t']:.2f}, "
                    f"p = {r['p']:.3g}, {pct} % CI [{r['lower']:+.3g}, {r['upper']:+.3g}]; means {r['n_positive']} up, "
                    f"{r['n_negative']} down; intervals {r['n_above']} above 0, {r['n_below']} below"
                )
            else:
                lines.append(f"      random effects: mean {r['mean']:+.3g}; {r['test']}")
    lines += [f"  note: {x}" for x in group["notes"]]
    return lines
