"""LLM-SRec's user and item prompts as token ids, with the item whose
recommender vector replaces each [HistoryEmb] token.

Pieces of the templates and every title are tokenized once; a prompt is the
concatenation of their ids plus three added tokens (ids ``vocab_size``,
``+1``, ``+2``: [HistoryEmb], [UserOut], [ItemOut]). The representation token
is always a prompt's last real token.

user: This user has made a series of purchases in the following order:
      Item No.1, "<title>"[HistoryEmb], Item No.2, ... . Based on this
      sequence of purchases, generate user representation token:[UserOut]
item: The item title and item embedding are as follows: "<title>"[HistoryEmb],
      then generate item representation token:[ItemOut]
"""

from __future__ import annotations

import numpy as np

EXTRA_TOKENS = 3
HISTORY, USER_OUT, ITEM_OUT = range(EXTRA_TOKENS)

USER_START = "This user has made a series of purchases in the following order: "
USER_END = ". Based on this sequence of purchases, generate user representation token:"
ITEM_START = "The item title and item embedding are as follows: "
ITEM_END = ", then generate item representation token:"


class Prompts:
    """Token ids of the prompts over a dataset's titles (index 0: padding)."""

    def __init__(self, tokenizer, titles: list[str], vocab_size: int, max_history: int, title_tokens: int):
        pieces = lambda texts, special=False: tokenizer(list(texts), add_special_tokens=special)["input_ids"]
        self.max_history = max_history
        self.history_id, self.user_out_id, self.item_out_id = (vocab_size + i for i in range(EXTRA_TOKENS))
        self.titles = [ids[:title_tokens] for ids in pieces(f'"{t}"' for t in titles)]
        self.user_start = pieces([USER_START], special=True)[0]
        self.numbers = pieces(f"Item No.{j + 1}, " for j in range(max_history))
        self.separator = pieces([", "])[0]
        self.user_end = pieces([USER_END])[0] + [self.user_out_id]
        self.item_start = pieces([ITEM_START], special=True)[0]
        self.item_end = pieces([ITEM_END])[0] + [self.item_out_id]
        longest_title = max(len(t) for t in self.titles)
        per_item = max(len(n) for n in self.numbers) + longest_title + 1 + len(self.separator)
        self.user_length = len(self.user_start) + max_history * per_item + len(self.user_end)
        self.item_length = len(self.item_start) + longest_title + 1 + len(self.item_end)

    def user(self, history: np.ndarray) -> tuple[list[int], list[int]]:
        """(ids, item at each position: the item id at its [HistoryEmb], else 0)
        for one history of item ids (padding 0s are skipped)."""
        ids, items = list(self.user_start), [0] * len(self.user_start)
        for j, item in enumerate(int(i) for i in history[history > 0][-self.max_history :]):
            text = (self.separator if j else []) + self.numbers[j] + self.titles[item]
            ids += text + [self.history_id]
            items += [0] * len(text) + [item]
        return ids + self.user_end, items + [0] * len(self.user_end)

    def item(self, item: int) -> tuple[list[int], list[int]]:
        part = self.item_start + self.titles[item]
        ids = part + [self.history_id] + self.item_end
        return ids, [0] * len(part) + [item] + [0] * len(self.item_end)

    def users(self, histories: np.ndarray, multiple: int = 64) -> dict[str, np.ndarray]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``history_items``
        [rows, width] for a batch of histories; the width is the longest prompt
        rounded up to ``multiple`` (at most ``user_length``), so batches come in
        a few shapes, each compiled once."""
        prompts = [self.user(h) for h in histories]
        longest = max(len(ids) for ids, _ in prompts)
        return _pad(prompts, min(self.user_length, -(-longest // multiple) * multiple))

    def all_items(self, num_items: int) -> dict[str, np.ndarray]:
        """The item prompt of every item id 0..num_items (row 0 is a dummy), [num_items + 1, item_length]."""
        return _pad([self.item(max(i, 1)) for i in range(num_items + 1)], self.item_length)


def _pad(prompts: list[tuple[list[int], list[int]]], length: int) -> dict[str, np.ndarray]:
    ids = np.zeros((len(prompts), length), np.int32)
    items = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for row, (prompt, prompt_items) in enumerate(prompts):
        ids[row, : len(prompt)], items[row, : len(prompt)], mask[row, : len(prompt)] = prompt, prompt_items, 1
    return {"input_ids": ids, "attention_mask": mask, "history_items": items}
