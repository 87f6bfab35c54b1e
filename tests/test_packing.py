"""Packed rows: several short sequences per row with segment ids, giving the
same states, pooled vectors and losses as one padded row per sequence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrec
from jaxrec.shapes import align_packed_blocks, pack_sequences, pad_sequences, pad_trailing_axes
from jaxrec.models.layers import positions_from_mask
from jaxrec.methods.llm2rec import contrastive, mntp
from tests.conftest import random_ids
from tests.train_helpers import assert_same_csft_loss_and_gradients

LENGTHS = [7, 3, 12, 5, 5, 9, 2, 4, 6]


def _sequences(seed=0):
    return [random_ids(1, n, seed=seed + i)[0].tolist() for i, n in enumerate(LENGTHS)]


def test_pack_places_every_sequence_once_within_the_width():
    sequences = _sequences()
    packed = pack_sequences(sequences, width=16, pad_id=0, max_segments=3)
    ids, segments = packed["input_ids"], packed["attention_mask"]
    assert ids.shape[1] == 16
    assert segments.max() <= 3 and int((segments > 0).sum()) == sum(LENGTHS)
    for index, seq in enumerate(sequences):
        row, segment = packed["item_row"][index], packed["item_segment"][index]
        np.testing.assert_array_equal(ids[row][segments[row] == segment + 1], seq)
    with pytest.raises(ValueError, match="does not fit packed rows of width 8"):
        pack_sequences(sequences, width=8, pad_id=0, max_segments=3)


def test_each_device_block_is_packed_into_its_own_equal_rows():
    """Each block's sequences, and the per-token values aligned with them,
    sit in that block's rows; aligned values are 0 wherever no token is."""
    sequences = _sequences() * 4  # 36 sequences, 4 blocks of 9
    flags = [[(index + k) % 2 + 1 for k in range(len(seq))] for index, seq in enumerate(sequences)]
    packed = pack_sequences(sequences, width=16, pad_id=0, max_segments=3, blocks=4, aligned={"flags": flags})
    rows = len(packed["input_ids"]) // 4
    assert len(packed["input_ids"]) == 4 * rows
    assert packed["flags"].shape == packed["input_ids"].shape
    np.testing.assert_array_equal(packed["flags"] > 0, packed["attention_mask"] > 0)
    for index, seq in enumerate(sequences):
        row, segment = packed["item_row"][index], packed["item_segment"][index]
        assert row // rows == index // 9  # in its own block's rows
        at = packed["attention_mask"][row] == segment + 1
        np.testing.assert_array_equal(packed["input_ids"][row][at], seq)
        np.testing.assert_array_equal(packed["flags"][row][at], flags[index])


def test_processes_packing_their_halves_assemble_the_single_process_batch():
    """Two processes, each packing its half of a batch over its 2 devices and
    padding to the agreed row count, give exactly the rows and item positions
    of one process packing the whole batch over 4 devices."""
    rng = np.random.default_rng(0)
    sequences = [rng.integers(3, 90, size=rng.integers(1, 16)).tolist() for _ in range(32)]
    whole = pack_sequences(sequences, width=16, pad_id=0, max_segments=16, blocks=4)
    halves = [pack_sequences(sequences[p * 16 : (p + 1) * 16], width=16, pad_id=0, max_segments=16, blocks=2)
              for p in range(2)]
    agreed = max(len(h["input_ids"]) // 2 for h in halves)
    assert agreed == len(whole["input_ids"]) // 4
    parts = [align_packed_blocks(h, blocks=2, rows_per_block=agreed, first_block=2 * p) for p, h in enumerate(halves)]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), whole[key], err_msg=key)
    with pytest.raises(ValueError, match="do not fit"):
        align_packed_blocks(halves[0], blocks=2, rows_per_block=1, first_block=0)


def test_padded_rows_widened_to_the_agreed_shape_keep_their_values():
    """A process whose rows fell in a shorter length bucket pads them at the
    end of the length (and budget) axes with zeros to the shape the processes
    agreed on; rows and values already there are unchanged."""
    batch = {"input_ids": np.arange(1, 13).reshape(3, 4), "attention_mask": np.ones((3, 4), np.int32),
             "target_positions": np.full((3, 2), 3), "item_row": np.arange(3)}
    shapes = {"input_ids": (6,), "attention_mask": (6,), "target_positions": (5,), "item_row": ()}
    wide = pad_trailing_axes(batch, shapes)
    assert wide["input_ids"].shape == (3, 6) and wide["target_positions"].shape == (3, 5)
    np.testing.assert_array_equal(wide["input_ids"][:, :4], batch["input_ids"])
    assert not wide["input_ids"][:, 4:].any() and not wide["attention_mask"][:, 4:].any()
    assert not wide["target_positions"][:, 2:].any()
    assert wide["item_row"] is batch["item_row"]
    with pytest.raises(ValueError, match="wider than the agreed"):
        pad_trailing_axes(batch, {**shapes, "input_ids": (3,)})


def test_positions_restart_in_each_segment_and_padding_is_unchanged():
    packed = jnp.asarray([[1, 1, 2, 2, 2, 3, 0, 0]])
    np.testing.assert_array_equal(positions_from_mask(packed), [[0, 1, 0, 1, 2, 0, 0, 0]])
    left = jnp.asarray([[0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(positions_from_mask(left), [[0, 0, 0, 1, 2]])


@pytest.mark.parametrize("variant", ["llama-tied-gqa", "qwen2-untied"])
@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
def test_packed_states_equal_one_row_per_sequence(tiny_checkpoints, variant, kind):
    directory, _ = tiny_checkpoints(variant)
    lm = jaxrec.load_lm(directory)
    sequences = _sequences()
    packed = pack_sequences(sequences, width=16, pad_id=0, max_segments=4)
    got = np.asarray(lm.hidden_states(packed["input_ids"], packed["attention_mask"], mask=kind))
    ids, mask = pad_sequences(sequences, 12, 0)
    expected = np.asarray(lm.hidden_states(ids, mask, mask=kind))
    for index, seq in enumerate(sequences):
        row, segment = packed["item_row"][index], packed["item_segment"][index]
        at = packed["attention_mask"][row] == segment + 1
        np.testing.assert_allclose(got[row][at], expected[index, : len(seq)], atol=1e-4, rtol=0)


def test_packed_contrastive_loss_equals_the_padded_one(tiny_checkpoints):
    directory, _ = tiny_checkpoints("llama-tied-gqa")
    lm = jaxrec.load_lm(directory)
    spec = contrastive.ContrastiveSpec(temperature=0.1, views="dropout")  # no dropout: both views equal
    _, loss = contrastive.make_loss(lm.model, spec, mntp.MaskingSpec(), 1, (0, 1, 2))
    sequences = _sequences(seed=3)
    ids, mask = pad_sequences(sequences, 12, 0)
    padded, _ = loss({"params": lm.params}, {}, {"input_ids": ids, "attention_mask": mask}, jax.random.key(0))
    packed = pack_sequences(sequences, width=16, pad_id=0, max_segments=4)
    value, _ = loss({"params": lm.params}, {}, packed, jax.random.key(0))
    np.testing.assert_allclose(float(value), float(padded), rtol=1e-5)


def test_packed_csft_loss_and_gradients_equal_the_padded_ones(tiny_checkpoints):
    """Histories with their targets packed several to a row (split over two
    device blocks) give the loss and gradients of the left-padded batch."""
    from jaxrec.methods.llm2rec import csft

    directory, _ = tiny_checkpoints("llama-tied-gqa")
    lm = jaxrec.load_lm(directory)
    rng = np.random.default_rng(5)
    examples = []
    for history, target in [(5, 3), (9, 2), (2, 4), (11, 1), (4, 4), (6, 3)]:
        ids = rng.integers(3, 90, size=history + target).tolist()
        examples.append((ids, [0] * history + [1] * target))
    padded = csft.collate(examples, pad_id=0, max_length=24)
    packed = csft.collate(examples, pad_id=0, max_length=24, pack=True, blocks=2)
    assert len(packed["input_ids"]) < len(padded["input_ids"]) and packed["target_valid"].shape[0] == 2
    assert_same_csft_loss_and_gradients(lm.params, lm.model, packed, padded)


def test_a_target_that_starts_a_packed_sequence_is_not_scored():
    from jaxrec.methods.llm2rec import csft

    batch = csft.collate([([7, 8], [1, 1]), ([5, 6, 9], [0, 1, 1])], pad_id=0, max_length=8, pack=True)
    rows, columns, valid = batch["target_rows"], batch["target_columns"], batch["target_valid"]
    scored = {(int(r), int(c)) for r, c, v in zip(rows[0], columns[0], valid[0]) if v}
    starts = {(int(r), int(c)) for r, c in zip(*np.nonzero(batch["attention_mask"]))
              if c == 0 or batch["attention_mask"][r, c - 1] != batch["attention_mask"][r, c]}
    assert len(scored) == 3 and not scored & starts


def test_masking_never_picks_the_first_token_of_a_packed_sequence():
    packed = pack_sequences([[5] * n for n in LENGTHS] * 20, width=16, pad_id=0, max_segments=4)
    segments = jnp.asarray(packed["attention_mask"])
    firsts = np.asarray((positions_from_mask(segments) == 0) & (segments > 0))
    chosen_total = 0
    for seed in range(20):
        _, chosen = mntp.mask_tokens(jax.random.key(seed), jnp.asarray(packed["input_ids"]), segments, rate=0.3,
                                     mask_token_id=1, vocab_size=100)
        chosen = np.asarray(chosen)
        assert not chosen[firsts].any() and not chosen[packed["attention_mask"] == 0].any()
        chosen_total += chosen.sum()
    eligible = 20 * (sum(LENGTHS) - len(LENGTHS)) * 20
    assert abs(chosen_total / eligible - 0.3) < 0.02
