"""Runs RecBole 1.2.1's SASRec on ml-100k with the settings of
``configs/sasrec_ml100k.yaml`` and prints one JSON line of results.

Executed by ``python -m jaxrec.bench recbole`` with the interpreter of a
separate virtual environment that holds RecBole and torch; it imports nothing
from jaxrec. Usage: python recbole_runner.py SEED MAX_EPOCHS WORK_DIR
"""

import json
import sys
import time
from pathlib import Path

import recbole
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed


def main(seed: int, max_epochs: int, work_dir: Path) -> None:
    settings = {
        "data_path": str(Path(recbole.__file__).parent / "dataset_example"),
        "checkpoint_dir": str(work_dir / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 10,
        "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2,
        "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu",
        "loss_type": "CE", "train_neg_sample_args": None,
        "learning_rate": 0.001, "train_batch_size": 2048, "epochs": max_epochs, "stopping_step": 10,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Recall", "NDCG"], "topk": [5, 10, 20], "valid_metric": "NDCG@10",
        "eval_batch_size": 4096, "seed": seed, "reproducibility": True, "show_progress": False,
        "state": "WARNING", "device": "cpu", "use_gpu": False,
    }
    config = Config(model="SASRec", dataset="ml-100k", config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset)
    trainer = Trainer(config, model)

    epoch_seconds = []
    train_epoch = trainer._train_epoch

    def timed_train_epoch(*args, **kwargs):
        start = time.perf_counter()
        result = train_epoch(*args, **kwargs)
        epoch_seconds.append(time.perf_counter() - start)
        return result

    # keep the best state in memory: RecBole's checkpoint file would need an unrestricted torch.load
    best_state = {}

    def remember_best(*args, **kwargs):
        best_state.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    trainer._train_epoch = timed_train_epoch
    trainer._save_checkpoint = remember_best
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    model.load_state_dict(best_state)
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    print(json.dumps({
        "seed": seed, "epochs": len(epoch_seconds), "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds),
        "best_valid_ndcg@10": float(best_valid), "test": {k: float(v) for k, v in test.items()},
        "training_examples": len(train_data.dataset),
    }))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
