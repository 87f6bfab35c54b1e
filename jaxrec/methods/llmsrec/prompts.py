"""LLM-SRec's user and item prompts as token ids, with the item whose
recommender vector replaces each [HistoryEmb] token.

Pieces of the templates, every title and every date are tokenized once; a
prompt is the concatenation of their ids plus three added tokens (ids
``vocab_size``, ``+1``, ``+2``: [HistoryEmb], [UserOut], [ItemOut]). The
representation token is always a prompt's last real token. As the authors'
code, history items are joined by "," and each shows its interaction date:

user: This user has made a series of purchases in the following order:
      Item No.1, Time: 2014-07-14, "<title>"[HistoryEmb],Item No.2, ... .
      Based on this sequence of purchases, generate user representation
      token:[UserOut]
item: The item title and item embedding are as follows: "<title>"[HistoryEmb],
      then generate item representation token:[ItemOut]
"""

from __future__ import annotations

import datetime

import numpy as np

from jaxrec.data.prep import SeqData

TOKEN_NAMES = ["[HistoryEmb]", "[UserOut]", "[ItemOut]"]
EXTRA_TOKENS = len(TOKEN_NAMES)
HISTORY, USER_OUT, ITEM_OUT = range(EXTRA_TOKENS)

USER_START = "This user has made a series of purchases in the following order: "
USER_END = ". Based on this sequence of purchases, generate user representation token:"
ITEM_START = "The item title and item embedding are as follows: "
ITEM_END = ", then generate item representation token:"
SEPARATOR = ","
SECONDS_PER_DAY = 86400


def date_text(day: int) -> str:
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=int(day))).isoformat()


class InteractionDays:
    """The day (since 1970-01-01, UTC) on which a user interacted with an item;
    for an item a user has more than once, the latest (as the authors' lookup).
    Looked up by (user, item), so a shuffled history keeps each item's date."""

    def __init__(self, data: SeqData):
        self.stride = data.num_items + 1
        users = np.repeat(np.arange(data.num_users, dtype=np.int64), np.diff(data.offsets))
        keys = users * self.stride + data.items
        days = np.floor(np.asarray(data.timestamps, np.float64) / SECONDS_PER_DAY).astype(np.int64)
        order = np.lexsort((days, keys))
        keys, days = keys[order], days[order]
        latest = np.r_[keys[1:] != keys[:-1], True]
        self.keys, self.days = keys[latest], days[latest]

    def all_days(self) -> np.ndarray:
        return np.unique(self.days)

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[rows, length] days of ``items`` for the row's user (``users`` [rows]); -1 at padding."""
        keys = np.asarray(users, np.int64)[:, None] * self.stride + items
        found = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        if np.any((items > 0) & (self.keys[found] != keys)):
            raise ValueError("an item in a history is not one of its user's items")
        return np.where(items > 0, self.days[found], -1)


class Prompts:
    """Token ids of the prompts over a dataset's titles (index 0: padding)."""

    def __init__(self, tokenizer, titles: list[str], vocab_size: int, max_history: int, title_tokens: int,
                 days: np.ndarray | None = None):
        """``days``: every day a user prompt may show (see ``InteractionDays``); None: prompts without dates."""
        pieces = lambda texts, special=False: tokenizer(list(texts), add_special_tokens=special)["input_ids"]
        self.max_history = max_history
        self.history_id, self.user_out_id, self.item_out_id = (vocab_size + i for i in range(EXTRA_TOKENS))
        self.titles = [ids[:title_tokens] for ids in pieces(f'"{t}"' for t in titles)]
        self.user_start = pieces([USER_START], special=True)[0]
        self.numbers = pieces(f"Item No.{j + 1}, " for j in range(max_history))
        self.separator = pieces([SEPARATOR])[0]
        self.dates = {} if days is None else dict(zip(np.asarray(days).tolist(),
                                                       pieces(f"Time: {date_text(d)}, " for d in days)))
        self.user_end = pieces([USER_END])[0] + [self.user_out_id]
        self.item_start = pieces([ITEM_START], special=True)[0]
        self.item_end = pieces([ITEM_END])[0] + [self.item_out_id]
        longest_title = max(len(t) for t in self.titles)
        longest_date = max((len(d) for d in self.dates.values()), default=0)
        per_item = max(len(n) for n in self.numbers) + longest_date + longest_title + 1 + len(self.separator)
        self.user_length = len(self.user_start) + max_history * per_item + len(self.user_end)
        self.item_length = len(self.item_start) + longest_title + 1 + len(self.item_end)

    def user(self, history: np.ndarray, days: np.ndarray | None = None) -> tuple[list[int], list[int]]:
        """(ids, item at each position: the item id at its [HistoryEmb], else 0)
        for one history of item ids (padding 0s are skipped); ``days``: the day
        of each history entry, needed when the prompts show dates."""
        real = history > 0
        items = history[real][-self.max_history :]
        if self.dates:
            if days is None:
                raise ValueError("these prompts show dates: pass each history item's day")
            shown = [self.dates[int(d)] for d in days[real][-self.max_history :]]
        else:
            shown = [[]] * len(items)
        ids, marks = list(self.user_start), [0] * len(self.user_start)
        for j, (item, date) in enumerate(zip(items.tolist(), shown)):
            text = (self.separator if j else []) + self.numbers[j] + date + self.titles[item]
            ids += text + [self.history_id]
            marks += [0] * len(text) + [item]
        return ids + self.user_end, marks + [0] * len(self.user_end)

    def item(self, item: int) -> tuple[list[int], list[int]]:
        part = self.item_start + self.titles[item]
        ids = part + [self.history_id] + self.item_end
        return ids, [0] * len(part) + [item] + [0] * len(self.item_end)

    def users(self, histories: np.ndarray, days: np.ndarray | None = None, multiple: int = 16) -> dict[str, np.ndarray]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``history_items``
        [rows, width] for a batch of histories (and their ``days``); the width
        is the longest prompt rounded up to ``multiple`` (at most
        ``user_length``), so batches come in a few shapes, each compiled once.
        (ml-100k with dates, batches of 20: widths 336-384, 352 on average,
        against 384 for every batch when rounded up to 64.)"""
        row_days = days if days is not None else [None] * len(histories)
        prompts = [self.user(h, d) for h, d in zip(histories, row_days)]
        longest = max(len(ids) for ids, _ in prompts)
        return _pad(prompts, min(self.user_length, -(-longest // multiple) * multiple))

    def all_items(self, num_items: int) -> dict[str, np.ndarray]:
        """The item prompt of every item id 0..num_items (row 0 is a dummy), [num_items + 1, item_length]."""
        return _pad(self._every_item(num_items), self.item_length)

    def item_parts(self, num_items: int) -> dict[str, np.ndarray]:
        """Every item prompt (row 0 a dummy) split at its [HistoryEmb]: ``start_ids``
        and ``start_mask`` [num_items + 1, width], the text before it (template and
        title), right-padded; ``end_ids`` [end length], the rest from [HistoryEmb]
        on, the same for every item. Nothing trained reaches the start of a
        prompt through a causal decoder, so its keys and values can be computed
        without a gradient (``Decoder`` ``output="kv"`` and ``past``)."""
        prompts = self._every_item(num_items)
        splits = [ids.index(self.history_id) for ids, _ in prompts]
        end = prompts[0][0][splits[0] :]
        starts = _pad([(ids[:at], marks[:at]) for (ids, marks), at in zip(prompts, splits)], self.item_length - len(end))
        return {"start_ids": starts["input_ids"], "start_mask": starts["attention_mask"], "end_ids": np.array(end, np.int32)}

    def _every_item(self, num_items: int) -> list[tuple[list[int], list[int]]]:
        return [self.item(max(i, 1)) for i in range(num_items + 1)]  # row 0 (padding) repeats item 1


def _pad(prompts: list[tuple[list[int], list[int]]], length: int) -> dict[str, np.ndarray]:
    ids = np.zeros((len(prompts), length), np.int32)
    items = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for row, (prompt, prompt_items) in enumerate(prompts):
        ids[row, : len(prompt)], items[row, : len(prompt)], mask[row, : len(prompt)] = prompt, prompt_items, 1
    return {"input_ids": ids, "attention_mask": mask, "history_items": items}
