"""Heterogeneous (vertical) logistic regression: one function per party over a :class:`Channel`.

The guest holds labels and some features, each host other features of the same (aligned)
rows, and the key holder decrypts. Two topologies:

* **arbiter** (Hardy et al., arXiv:1711.10677, §3; FATE's hetero-LR): a third party without
  data generates the key pair and only ever decrypts masked values.
* **two-party** (no arbiter, exactly one host): each of the two parties holds its *own* key
  pair. One key is not enough: if the guest held the only key, every host value encrypted for
  the guest's residual would be readable by the guest. The host's partial logits travel under
  the host's key, the guest's residual part under the guest's key, and each party decrypts
  only the other's *masked* gradient (cf. Yang et al., "Parallel distributed logistic
  regression for vertical federated learning without third-party coordinator",
  arXiv:1911.09824).

The protocol is split by concept:

* :mod:`.messages` — the message kinds, in the order of a job, each with its one payload shape;
* :mod:`.config` — the agreed settings (:class:`TrainingConfig`, the ``[privacy]`` section,
  :class:`Topology`), their digests and the DP plan;
* :mod:`.model` — each party's :class:`LocalModel` (preprocessing, weights, update);
* :mod:`.keys` — keys, masks, DP noise shares and the per-epoch ledger charge;
* :mod:`.loss` — the encrypted Taylor loss (no DP only);
* :mod:`.parties` — :func:`guest_train`, :func:`host_train`, :func:`arbiter_train`, with one
  step function per role and topology (the step diagrams are there);
* :mod:`.prediction` — the joint prediction protocol and the evaluation metrics.

This module is their overview and re-exports the public names.

Who learns what:

* hosts receive only ciphertexts under a key they do not hold, batch indices, and their own
  gradient (noised, under DP, by every party) — never labels, residuals or another
  party's features or weights;
* the guest receives ciphertexts it cannot decrypt and its own (noised) gradient — never a
  host's features, partial logits or weights;
* the key holder decrypts only ``g_p + m_p (+ noise)``: the uniform mask hides ``g_p`` up to a
  statistical distance of ``|g_p| / (2M)`` per coordinate *per step* (the masks are reals, not
  uniform over the plaintext ring: a value outside ``[−M, M]`` gives away the sign of ``g_p``
  and a lower bound on it). These leaks add up over the steps of a run — up to
  ``Σ_steps |g_p| / (2M)`` per coordinate — so without DP there is no run-level guarantee,
  only a per-step one that a larger ``M`` improves; under DP the decrypted value is already
  noised and the run-level guarantee is the DP one. On Paillier the gradients travel
  BatchCrypt-packed (:class:`.keys.GradSlots`) under an integer mask uniform on ``[0, n)``: the
  key holder's view ``(V + R) mod n`` is exactly uniform per ciphertext and step, whatever bound
  its own inputs declared (a false one is caught when the party unmasks);
* without DP, the key holder also decrypts the training loss once per epoch (the mean Taylor
  loss ``log 2 − 1/2 + 2·mean(d²)``, see :mod:`.taylor`; as one scalar, or a few partial sums
  over groups of steps when CKKS's magnitude bound forbids one sum); the guest receives it.
  Under DP the training loss is not decrypted (it would be a further release), so early
  stopping is off and the planned number of epochs — the one the budget was calibrated for —
  runs.
* the joint prediction protocol (:func:`predict_guest` / :func:`serve_predictions`) reveals
  the hosts' exact partial scores ``X_h w_h`` of the requested rows to the guest, as in FATE.
  A job uses it at most once, after training, on the held-out rows, and only without DP
  (``insecure``): a per-customer score cannot be released under DP with any useful accuracy
  (its sensitivity is the whole score range), so a DP job releases no held-out scores at all.
  Nothing is evaluated during training: repeated scores under changing weights would reveal
  the column space of the hosts' features;
* without DP, every party receives its **exact** gradient ``X_pᵀd / n_b``: from it a host
  recovers the residuals, hence the labels, once it has as many features as a batch has rows
  (with zero initial weights, 100 % of the training labels in epoch 1), and a guest the hosts'
  partial logits. Training without DP is refused unless the config opts in with ``[crypto]
  insecure = true``, and refused even then when a party has at least ``batch_size`` features
  (docs/vertical.md).

DP (record level, replace one customer's row) is described in :mod:`.taylor`: features are
scaled with public bounds (``bounds``, required for every feature under DP), each epoch's
batches are a shuffled partition of the training rows, each released gradient ``g_p`` carries
Gaussian noise of at least ``σ_p = z·Δ_p`` (``Δ_p`` the replace-one sensitivity) that no
``colluders`` parties can subtract: every data party (``p`` included, under encryption before
it masks) and the arbiter, if any, add a share (:meth:`.taylor.DpPlan.share_sigma`), so no
single party knows the noise on any gradient. Each data party charges its ledger (required
under DP) with ``GaussianEvent(z/sqrt(P), 1.0, 1)`` once per epoch **before** it contributes
the noise shares that every decryption of that epoch waits for. A host checks that the guest's
batches partition the training rows before it charges.
"""
# ``X as X``: re-exported although outside ``__all__`` (as before the split), like ``_clip_logits``,
# which the tests import.
from fedsilo.protocols.vertical.config import Topology, TrainingConfig
from fedsilo.protocols.vertical.keys import NoiseDraw
from fedsilo.protocols.vertical.keys import NoiseTap as NoiseTap
from fedsilo.protocols.vertical.messages import (
    CROSS as CROSS,
    EPOCH as EPOCH,
    GRAD as GRAD,
    HELLO as HELLO,
    KEY as KEY,
    LOSS as LOSS,
    LOSS_VALUE as LOSS_VALUE,
    MESSAGE_KINDS,
    NOISE as NOISE,
    PARTIAL as PARTIAL,
    PLAIN as PLAIN,
    PREDICT as PREDICT,
    PROTOCOL as PROTOCOL,
    RESIDUAL as RESIDUAL,
    SCORE as SCORE,
    SETUP as SETUP,
)
from fedsilo.protocols.vertical.model import FitResult, LocalModel
from fedsilo.protocols.vertical.model import clip_logits as _clip_logits  # noqa: F401
from fedsilo.protocols.vertical.parties import arbiter_train, guest_train, host_train
from fedsilo.protocols.vertical.prediction import evaluation_metrics, predict_guest, serve_predictions

__all__ = [
    "MESSAGE_KINDS",
    "FitResult",
    "LocalModel",
    "NoiseDraw",
    "Topology",
    "TrainingConfig",
    "arbiter_train",
    "evaluation_metrics",
    "guest_train",
    "host_train",
    "predict_guest",
    "serve_predictions",
]
