"""Negative items that are never among a user's own items, drawn vectorised.

Every (user, item) pair a user interacted with is one sorted integer key
``user * stride + item``, so "is this item one of the user's" is a
``searchsorted`` over whole arrays of draws instead of a Python set per user.
Both the sampled evaluation (1 target + N distinct negatives per user) and the
BCE training loss (one negative per position) draw from here.
"""

from __future__ import annotations

import numpy as np

_ROUNDS = 8
"""Vectorised rejection rounds before the rows still short of negatives are
drawn one by one from their exact list of allowed items (users who consumed
most of the catalogue)."""


class UserItems:
    """Each user's set of items, for membership tests and negative sampling.
    Item ids run 1..num_items (0 is padding and never drawn)."""

    def __init__(self, offsets: np.ndarray, items: np.ndarray, num_items: int, never: np.ndarray | None = None):
        """User u's items are ``items[offsets[u]:offsets[u + 1]]`` (as in ``SeqData``);
        ``never``: items no user may draw (held-out cold items), counted as everyone's."""
        self.num_items, self.stride = num_items, num_items + 1
        self.never = np.zeros(0, np.int64) if never is None else np.unique(np.asarray(never, np.int64))
        users = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        items = np.asarray(items, np.int64)
        keys = np.unique(users * self.stride + items)
        self.keys = keys[keys % self.stride > 0]  # padding is never an item
        own = self.keys[~np.isin(self.keys % self.stride, self.never)]
        counts = np.bincount(own // self.stride, minlength=len(offsets) - 1)
        self.allowed = num_items - len(self.never) - counts
        """Items each user never interacted with (and may draw)."""

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each ``items`` entry is one of ``users``' (broadcast), or one no user may draw."""
        keys = np.asarray(users, np.int64) * self.stride + np.asarray(items, np.int64)
        found = np.searchsorted(self.keys, keys)
        mine = self.keys[np.minimum(found, len(self.keys) - 1)] == keys if len(self.keys) else np.zeros(keys.shape, bool)
        return mine | np.isin(items, self.never) if len(self.never) else mine

    def sample(self, rng: np.random.Generator, users: np.ndarray, count: int, distinct: bool = True) -> np.ndarray:
        """[len(users), count] items none of which the row's user interacted
        with; ``distinct``: no repeats within a row."""
        users = np.asarray(users, np.int64)
        needed = count if distinct else 1
        short = np.flatnonzero(self.allowed[users] < needed)
        if len(short):
            u = int(users[short[0]])
            raise ValueError(f"user {u}: only {self.allowed[u]} items left to sample {needed} negative(s) from "
                             f"({self.num_items} items, {self.num_items - self.allowed[u]} of them the user's)")
        out = np.zeros((len(users), count), np.int64)
        todo = np.arange(len(users))
        for _ in range(_ROUNDS):
            if not len(todo):
                return out
            draws = rng.integers(1, self.num_items + 1, size=(len(todo), 2 * count + 4))
            if distinct:
                draws.sort(axis=1)
            rejected = self.contains(users[todo, None], draws)
            if distinct:
                rejected[:, 1:] |= draws[:, 1:] == draws[:, :-1]
            done = (~rejected).sum(axis=1) >= count
            first_accepted = np.argsort(rejected, axis=1, kind="stable")[:, :count]
            picked = np.take_along_axis(draws, first_accepted, axis=1)
            if distinct:  # draws were sorted; the order of negatives should not carry information
                picked = rng.permuted(picked, axis=1)
            out[todo[done]] = picked[done]
            todo = todo[~done]
        for row in todo:
            mine = self.keys[np.searchsorted(self.keys, users[row] * self.stride):
                             np.searchsorted(self.keys, (users[row] + 1) * self.stride)] % self.stride
            allowed = np.setdiff1d(np.arange(1, self.num_items + 1), np.union1d(mine, self.never))
            out[row] = rng.choice(allowed, count, replace=not distinct)
        return out
