"""Configuration of the ``seqrec`` task: the recommender, its item
representation, its training examples and loss, and the evaluation."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxrec.inputs import InputField


def _at_least_one(spec, names) -> None:
    for name in names:
        if getattr(spec, name) is not None and getattr(spec, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(spec, name)}")


@dataclasses.dataclass
class BackboneSpec:
    """The sequence model that reads a history of item vectors."""

    model: Literal["sasrec", "gru4rec", "bert4rec"] = "sasrec"
    hidden: int = 64
    layers: int = 2
    heads: int = 1
    ffn: int | None = None
    """Feed-forward width of the attention blocks (default: hidden)."""
    dropout: float = 0.1
    activation: Literal["gelu", "relu"] = "gelu"
    activation_dropout: bool = True
    """Dropout after the feed-forward activation too (the SASRec paper's); false: only after its output (RecBole's)."""
    norm_first: bool = False
    """Pre-LN attention blocks; False is SASRec's post-LN."""
    query_residual: bool = False
    """With norm_first, the block of the public PyTorch SASRec (which LLMEmb's and LLM-SRec's code
    build on): the attention's query and both residuals come from the normalised states, its keys
    and values from the raw ones."""
    input_norm: bool = False
    """LayerNorm on item + position embeddings before the first block (RecBole's SASRec)."""
    scale_embeddings: bool = True
    """Multiply item embeddings by sqrt(hidden) before adding positions (the SASRec paper's)."""
    max_history: int = 10
    """Most recent items of a history the model reads."""
    gru_bias: bool = True
    """GRU4Rec: biases in the GRU cells (the LLM2Rec and LLMEmb authors' GRU4Rec: none)."""
    output_layer: bool = True
    """GRU4Rec: a dense layer on the last GRU's states (the authors' GRU4Rec: none)."""
    embedding_init: float = 0.02
    """Standard deviation of the normal initialisation of learned positions and ID item embeddings
    (BERT's and RecBole's 0.02; LLM2Rec's SASRec keeps torch's nn.Embedding default, 1.0)."""
    weight_init: Literal["normal", "xavier_normal"] = "normal"
    """Attention models' matrices: normal(0.02) (BERT, RecBole; positions and ID items by embedding_init),
    or xavier normal for every matrix, embeddings included (the public PyTorch SASRec: LLM-SRec's teacher)."""
    positions: Literal["from_start", "from_end"] = "from_start"
    """Learned positions counted from a history's first item, or by recency so that its last item is always
    at max_history - 1 (the public PyTorch SASRec pads rows on the left: LLM-SRec's teacher)."""
    mask_rate: float = 0.6
    """BERT4Rec: share of history items chosen for prediction (LLMEmb's code: 0.6)."""
    mask_random: float = 0.1
    """BERT4Rec: share of the chosen items replaced by a random item instead of the mask."""
    mask_keep: float = 0.1
    """BERT4Rec: share of the chosen items left unchanged (still predicted)."""
    mask_last_examples: bool = True
    """BERT4Rec: also train on each window with only its last item masked (as it is read at test time)."""

    def __post_init__(self):
        _at_least_one(self, ("hidden", "layers", "heads", "max_history"))
        if not self.embedding_init > 0:
            raise ValueError(f"embedding_init must be > 0, got {self.embedding_init}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.mask_rate < 1:
            raise ValueError(f"mask_rate must be in (0, 1), got {self.mask_rate}")
        if min(self.mask_random, self.mask_keep) < 0 or self.mask_random + self.mask_keep > 1:
            raise ValueError(f"mask_random + mask_keep must be a share in [0, 1], got {self.mask_random} + {self.mask_keep}")
        if self.query_residual and not self.norm_first:
            raise ValueError("query_residual is a pre-LN variant: set norm_first: true")


@dataclasses.dataclass
class ItemsSpec:
    """How items enter the backbone: trainable IDs, frozen LLM vectors through an adapter, or both."""

    INPUTS = {"embeddings": InputField("an encode run directory or an .npy file", run=True)}

    kind: Literal["id", "llm", "id+llm"] = "id"
    """Trainable ID embeddings, frozen LLM embeddings through an adapter, or both."""
    combine: Literal["sum", "concat"] = "sum"
    """How 'id+llm' joins the two (concat: half the hidden width each)."""
    id_dropout: float = 0.0
    """'id+llm': share of the items whose ID part is zeroed in each training step (item dropout, as in
    DropoutNet), so that the adapted LLM part alone learns to rank them, as it must for items without a
    trained ID vector (held-out cold items, items added after training); 0: off (none of the three
    methods' code has an ID + LLM model)."""
    embeddings: str | None = None
    """For 'llm' / 'id+llm': an encode run directory (item_embeddings.npy + item_ids.json) or an .npy file with item_ids.json beside it."""
    pca: int | None = None
    """Reduce the LLM embeddings to this many principal components first (LLMEmb: 1536)."""
    conditioning: Literal["none", "scale", "center_scale", "standardize", "whiten"] = "none"
    """Rescaling of the frozen LLM matrix, once, before PCA: none (the authors' code), scale (divide by
    the mean row norm), center_scale (subtract the mean row first), standardize (per dimension, then
    divide by sqrt(dim)), whiten (rotated onto the principal directions, each to unit variance, then
    divided by sqrt(directions); with pca, the top pca directions whitened). Mean-pooled LLM rows have
    norms of tens, which saturates the softmax at initialisation; see the shipped configs for the measured effect."""
    adapter: list[int] = dataclasses.field(default_factory=list)
    """Hidden widths of the adapter before its last layer (of width hidden); [] is one linear layer (LLM2Rec), [768] is LLMEmb's."""
    adapter_init: Literal["lecun_normal", "xavier_normal"] = "lecun_normal"
    """Initialisation of the adapter's weights (Flax's default; the authors' LLM2Rec adapter: xavier_normal)."""
    adapter_norm: bool = False
    """LayerNorm (with a learned scale and bias) on the adapter's output."""

    @property
    def uses_llm(self) -> bool:
        return self.kind != "id"

    def __post_init__(self):
        _at_least_one(self, ("pca",))
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {self.id_dropout}")
        if self.id_dropout and self.kind != "id+llm":
            raise ValueError(f"id_dropout drops the ID part of 'id+llm' items; kind is {self.kind!r}")
        if self.uses_llm and self.embeddings is None:
            raise ValueError(f"kind {self.kind!r} needs embeddings: an encode run directory or .npy file")


@dataclasses.dataclass
class AlignmentSpec:
    """LLMEmb's recommendation adaptation training (RAT): an InfoNCE loss that pulls the adapter's
    output for each item towards a trained ID model's vector of it."""

    INPUTS = {"to": InputField("a finished seqrec run directory", run=True)}

    to: str | None = None
    """A seqrec run directory of an ID model whose item embeddings the adapter output is aligned to; null: no alignment."""
    weight: float = 0.01
    tau: float = 2.0
    max_items: int | None = 256
    """Most items per step in the alignment loss: the targets of randomly chosen positions of the batch;
    null: the target of every position, as the authors' code. Either way the step scores at most the
    batch's real targets, in a few bucketed sizes (a batch of 128 Beauty users holds about 750), except
    under a backbone that masks items (BERT4Rec), whose targets are chosen in the step: uncapped, it
    scores every position (25,600 x 25,600 similarities for 128 histories of 200)."""
    normalize: bool = False
    """L2-normalise both sides of the alignment loss (the authors' code aligns raw vectors)."""

    def __post_init__(self):
        _at_least_one(self, ("max_items",))


FLAT_KEYS = {
    **{f.name: ("backbone", f.name) for f in dataclasses.fields(BackboneSpec)},
    **{f.name: ("items", f.name) for f in dataclasses.fields(ItemsSpec) if f.name != "kind"},
    "items": ("items", "kind"),
    **{f"align_{f.name}": ("alignment", f.name) for f in dataclasses.fields(AlignmentSpec)
       if f.name not in ("to", "max_items")},
    "align_to": ("alignment", "to"),
    "align_items": ("alignment", "max_items"),
}
"""Each key of the flat ``recommender`` section of jaxrec before it had sections -> where it is now."""


@dataclasses.dataclass
class RecommenderSpec:
    """A sequential recommender from parts: the backbone, its items and their alignment, and how it trains."""

    MOVED_KEYS = FLAT_KEYS  # a stored run's flat keys move here; a config written flat gets an error naming the place

    backbone: BackboneSpec = dataclasses.field(default_factory=BackboneSpec)
    items: ItemsSpec = dataclasses.field(default_factory=ItemsSpec)
    alignment: AlignmentSpec = dataclasses.field(default_factory=AlignmentSpec)
    examples: Literal["prefixes", "sequences", "last", "chunks"] = "prefixes"
    """prefixes: every training position is an example predicting its item from the ones before (RecBole);
    sequences: one example per user, the loss at every position of its latest window (the SASRec paper);
    last: one example per user, the loss at the last position of its latest window only (LLMEmb's GRU4Rec);
    chunks: each user's training items in consecutive windows of max_history, the loss at every position
    (every item a target once, about a tenth of the prefixes' compute)."""
    loss: Literal["softmax", "bce"] = "softmax"
    """Full-softmax cross-entropy over the catalogue, or BCE against sampled negatives."""
    negatives: int = 1
    """Sampled negatives per position for the BCE loss, never among the user's items."""

    def __post_init__(self):
        _at_least_one(self, ("negatives",))
        if self.alignment.to is not None and not self.items.uses_llm:
            raise ValueError("alignment.to aligns the LLM adapter's output; it needs items.kind 'llm' or 'id+llm'")
        if self.backbone.model == "bert4rec" and self.examples != "sequences":
            raise ValueError("bert4rec trains on masked sequences: set examples: sequences")


def flat_names(recommender: dict) -> dict:
    """A ``recommender`` tree (nested dicts) under the flat names of runs made before the sections."""
    flat = {key: value for key, value in recommender.items() if not isinstance(value, dict)}
    for flat_key, (section, name) in FLAT_KEYS.items():
        if name in recommender.get(section, {}):
            flat[flat_key] = recommender[section][name]
    return flat


@dataclasses.dataclass
class EvalSpec:
    ks: list[int] = dataclasses.field(default_factory=lambda: [5, 10, 20])
    exclude_history: bool = False
    """Remove each user's earlier items from the full-ranking candidates (RecBole 1.2.1 does for general recommenders, not for sequential ones; LLM2Rec does not)."""
    sampled_negatives: int = 0
    """Also rank the target against this many sampled negatives, distinct and never among the
    user's items (LLMEmb: 100, LLM-SRec: 99; 0: full ranking only)."""
    batch_size: int = 512
    """Users scored per batch."""
    popular_share: float = 0.2
    """Items in the top this share by training interactions are 'popular', the rest 'tail'."""
    cold_share: float | None = None
    """Also a 'cold' group: items in the bottom this share by training interactions
    (LLM-SRec's warm / cold split is popular_share 0.35 and cold_share 0.35)."""
    tail_threshold: int | None = None
    """Items with fewer than this many training interactions are 'tail', the others 'popular' (LLMEmb's
    absolute threshold per dataset, strict as in its code: Beauty 4, Fashion 4, Yelp 13); null: by popular_share."""
    popularity_bins: int = 5
    """Item groups of equally many items, least popular first (when popularity_edges is null)."""
    popularity_edges: list[int] | None = None
    """Item groups by training interactions split at these counts, each edge starting the group above it
    (LLMEmb: [5, 10, 20, 40], i.e. <5, 5-9, 10-19, 20-39, ≥40)."""
    history_bins: list[int] = dataclasses.field(default_factory=lambda: [5, 10, 20, 50])
    """Edges of the user groups by number of earlier interactions (each edge starts the group above it)."""
    shuffle: bool = True
    """Shuffle diagnostics on the test split: metrics with each history permuted, and the
    cosine between each user's representation from the original and the permuted history."""
    seeds: list[int] = dataclasses.field(default_factory=list)
    """Train and evaluate once per seed and report mean and std (default: just the run's seed)."""

    def __post_init__(self):
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive cut-offs, got {self.ks}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct (each trains its own model), got {self.seeds}")
        for name in ("popular_share", "cold_share"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if self.batch_size < 1 or self.popularity_bins < 1 or self.sampled_negatives < 0:
            raise ValueError("batch_size and popularity_bins must be >= 1, sampled_negatives >= 0")
        if self.tail_threshold is not None and self.tail_threshold < 1:
            raise ValueError(f"tail_threshold must be >= 1 (tail: fewer interactions than it), got {self.tail_threshold}")
        for name in ("popularity_edges", "history_bins"):
            edges = getattr(self, name)
            if edges is not None and (not edges or min(edges) < 1 or sorted(set(edges)) != list(edges)):
                raise ValueError(f"{name} must be increasing positive counts, got {edges}")

    def metric_names(self) -> list[str]:
        """The validation metrics a ranking evaluation records (what loop.monitor may name)."""
        return [f"{name}@{k}" for k in self.ks for name in ("recall", "ndcg")]


def ranking_monitor(loop, evaluation: EvalSpec):
    """``loop`` with a monitor that the ranking validation records: the loop's default
    (loss, which a recommender's validation does not compute) becomes Recall at the largest
    cut-off, maximised; any other name must be one of the evaluation's metrics."""
    if (loop.monitor, loop.monitor_mode) == ("loss", "min"):
        return dataclasses.replace(loop, monitor=f"recall@{max(evaluation.ks)}", monitor_mode="max")
    if loop.monitor not in evaluation.metric_names():
        raise ValueError(f"loop.monitor {loop.monitor!r} is not a validation metric of this task; choose one of "
                         f"{', '.join(evaluation.metric_names())} (evaluation.ks sets the cut-offs)")
    return loop

