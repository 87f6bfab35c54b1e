"""Every loss against a numpy reference on small hand-built batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.models.pooling import last_token_pool, mean_pool
from jaxrec.methods.llm2rec import contrastive, mntp
from jaxrec.methods.llmsrec import distill
from jaxrec.objectives import similarity, tokens

RNG = np.random.default_rng(0)


def _log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_next_token_loss_counts_only_target_tokens():
    logits = RNG.normal(size=(2, 5, 7)).astype(np.float32)
    ids = np.array([[1, 2, 3, 4, 5], [6, 5, 4, 3, 2]])
    target = np.array([[0, 0, 1, 1, 1], [0, 0, 0, 1, 0]])
    logp = _log_softmax(logits)
    terms = [-logp[b, t - 1, ids[b, t]] for b in range(2) for t in range(1, 5) if target[b, t]]
    loss, count = tokens.next_token_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(target))
    assert int(count) == 4
    np.testing.assert_allclose(float(loss), np.mean(terms), rtol=1e-6)


def test_mntp_masking_statistics_and_special_tokens():
    batch, length = 64, 64
    ids = RNG.integers(10, 100, size=(batch, length)).astype(np.int32)
    ids[:, 5] = 2  # a special token in every row
    attention = np.ones_like(ids)
    attention[:, :8] = 0  # left padding
    chosen_total, eligible_total = 0, 0
    kinds = np.zeros(3)
    for seed in range(40):
        corrupted, chosen = mntp.mask_tokens(
            jax.random.key(seed), jnp.asarray(ids), jnp.asarray(attention),
            rate=0.2, mask_token_id=1, vocab_size=100, special_ids=(2,),
        )
        corrupted, chosen = np.asarray(corrupted), np.asarray(chosen)
        assert not chosen[:, :9].any(), "padding, the special token and the first real token are never chosen"
        np.testing.assert_array_equal(corrupted[~chosen], ids[~chosen])
        chosen_total += chosen.sum()
        eligible_total += batch * (length - 9)
        kinds += [(corrupted[chosen] == 1).sum(), (corrupted[chosen] == ids[chosen]).sum(), 0]
    rate = chosen_total / eligible_total
    assert abs(rate - 0.2) < 0.01
    assert abs(kinds[0] / chosen_total - 0.8) < 0.02
    # unchanged: 10% kept + the ~1% of random replacements that draw the same id
    assert abs(kinds[1] / chosen_total - 0.1) < 0.02


def test_masked_next_token_loss_uses_the_logit_to_the_left():
    logits = RNG.normal(size=(1, 4, 6)).astype(np.float32)
    labels = np.array([[3, 1, 4, 1]])
    label_mask = np.array([[False, False, True, False]])
    loss, _ = mntp.masked_next_token_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(label_mask))
    np.testing.assert_allclose(float(loss), -_log_softmax(logits)[0, 1, 4], rtol=1e-6)


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_matches_numpy(symmetric):
    a, b = RNG.normal(size=(6, 8)), RNG.normal(size=(6, 8))
    logits = _normalize(a) @ _normalize(b).T / 0.1
    forward = -np.mean(np.diag(_log_softmax(logits, axis=1)))
    backward = -np.mean(np.diag(_log_softmax(logits.T, axis=1)))
    expected = (forward + backward) / 2 if symmetric else forward
    got = contrastive.info_nce(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), 0.1, symmetric)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def _soft_clip_numpy(x, y, tau):
    """LLMEmb's loss as the authors write it: logits X Y^T / tau against soft
    targets softmax((X X^T + Y Y^T) / 2 * tau), both directions averaged."""
    logits = x @ y.T / tau
    targets = np.exp(_log_softmax((x @ x.T + y @ y.T) / 2 * tau, axis=1))
    forward = -(targets * _log_softmax(logits, axis=1)).sum(1)
    backward = -(targets.T * _log_softmax(logits.T, axis=1)).sum(1)
    return np.mean((forward + backward) / 2)


@pytest.mark.parametrize("normalize", [False, True])
def test_soft_clip_loss_matches_numpy(normalize):
    x, y = RNG.normal(size=(5, 4)), RNG.normal(size=(5, 4))  # raw: norms about 2, dots up to ~4
    expected = _soft_clip_numpy(_normalize(x), _normalize(y), 3.0) if normalize else _soft_clip_numpy(x, y, 3.0)
    got = similarity.soft_clip_loss(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), jnp.float32(3.0), normalize)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    grad = jax.grad(lambda t: similarity.soft_clip_loss(jnp.asarray(x), jnp.asarray(y), t, normalize))(jnp.float32(3.0))
    assert np.isfinite(grad) and grad != 0.0, "tau must be learnable"


def test_soft_clip_loss_leaves_out_invalid_rows():
    x, y = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4))
    valid = np.array([True, False, True, True, False, True])
    got = similarity.soft_clip_loss(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), jnp.float32(2.0),
                              valid=jnp.asarray(valid))
    np.testing.assert_allclose(float(got), _soft_clip_numpy(x[valid], y[valid], 2.0), rtol=1e-5)


def _kernel_mean(z):
    """The authors' uniformity: the mean over ordered pairs of distinct rows of exp(-2 ||z_a - z_b||^2), no log."""
    z = _normalize(z)
    return np.mean([np.exp(-2 * np.sum((z[a] - z[b]) ** 2)) for a in range(len(z)) for b in range(len(z)) if a != b])


@pytest.mark.parametrize("reduction, log_uniformity", [("mean", False), ("sum", True)])
def test_sequence_distillation_parts_match_numpy(reduction, log_uniformity):
    user, teacher = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    items = RNG.normal(size=(4, 5, 3))
    scores = np.einsum("bd,bnd->bn", user, items)
    retrieval = -np.mean(_log_softmax(scores, axis=1)[:, 0])
    squared = (_normalize(user) - _normalize(teacher)) ** 2
    # the authors' MSELoss: the mean over every element; "sum": per user over the dimensions
    distillation = squared.mean() if reduction == "mean" else squared.sum(axis=1).mean()
    kernel = (np.log if log_uniformity else (lambda x: x))
    uniformity = kernel(_kernel_mean(user)) + kernel(_kernel_mean(teacher))  # user side and teacher side
    weights = distill.DistillWeights(distillation=0.5, uniformity=2.0, reduction=reduction,
                                     log_uniformity=log_uniformity)
    total, parts = distill.sequence_distillation_loss(jnp.asarray(user), jnp.asarray(items), jnp.asarray(teacher),
                                                      weights)
    np.testing.assert_allclose(float(parts["retrieval"]), retrieval, rtol=1e-5)
    np.testing.assert_allclose(float(parts["distillation"]), distillation, rtol=1e-5)
    np.testing.assert_allclose(float(parts["uniformity"]), uniformity, rtol=1e-5)
    np.testing.assert_allclose(float(total), retrieval + 0.5 * distillation + 2.0 * uniformity, rtol=1e-5)


def test_pooling_over_real_tokens_with_a_skipped_prefix():
    states = RNG.normal(size=(2, 5, 3)).astype(np.float32)
    mask = np.array([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    np.testing.assert_allclose(np.asarray(mean_pool(jnp.asarray(states), jnp.asarray(mask))),
                               [states[0, 1:].mean(0), states[1, :3].mean(0)], rtol=1e-6)
    skipped = mean_pool(jnp.asarray(states), jnp.asarray(mask), skip=jnp.asarray([2, 1]))
    np.testing.assert_allclose(np.asarray(skipped), [states[0, 3:].mean(0), states[1, 1:3].mean(0)], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(last_token_pool(jnp.asarray(states), jnp.asarray(mask))),
                               [states[0, 4], states[1, 2]], rtol=1e-6)


def test_mntp_selected_positions_give_the_full_loss():
    """Scoring only masked positions equals the loss over full logits."""
    logits = RNG.normal(size=(3, 10, 7)).astype(np.float32)
    labels = RNG.integers(0, 7, size=(3, 10))
    label_mask = RNG.random((3, 10)) < 0.3
    label_mask[:, 0] = False
    full, count = mntp.masked_next_token_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(label_mask))
    positions, valid = mntp.masked_positions(jnp.asarray(label_mask), 10, groups=3)  # a group per row
    picked = jnp.take_along_axis(jnp.asarray(logits), jnp.maximum(positions - 1, 0)[..., None], axis=1)
    part, part_count = tokens.selected_loss(picked, jnp.asarray(labels), positions, valid)
    np.testing.assert_allclose(float(part), float(full), rtol=1e-6)
    assert int(part_count) == int(count) == label_mask.sum()
    assert mntp.selection_budget(16, 0.2) < 16 and mntp.selection_budget(4, 0.2) == 4
    # positions counted through a group of rows (a device's), one budget for the group
    positions, valid = mntp.masked_positions(jnp.asarray(label_mask[:2]), 12, groups=1)
    assert positions.shape == (1, 12) and int(valid.sum()) == label_mask[:2].sum() and positions.max() >= 10
    flat_logits = jnp.asarray(logits[:2]).reshape(1, 20, 7)
    picked = jnp.take_along_axis(flat_logits, jnp.maximum(positions - 1, 0)[..., None], axis=1)
    grouped, _ = tokens.selected_loss(picked, jnp.asarray(labels[:2]), positions, valid)
    whole, _ = mntp.masked_next_token_loss(jnp.asarray(logits[:2]), jnp.asarray(labels[:2]), jnp.asarray(label_mask[:2]))
    np.testing.assert_allclose(float(grouped), float(whole), rtol=1e-6)
