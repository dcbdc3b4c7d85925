"""train.Progress, the checkpoint's record of where training stands."""
import json

from image_classifier.training.state import Progress

# The 11 keys checkpoints have always held (a checkpoint written before Progress existed resumes).
OLD = {"epoch": 2, "batches_done": 3, "loss_sum": 1.5, "correct": 4, "seen": 6, "seconds": 2.0, "failed": 1,
       "best_acc": 0.5, "best_epoch": 1, "stale_epochs": 1, "history": [{"epoch": 1, "valid_acc": 0.5}]}


def test_progress_is_the_checkpoint_format():
    p = Progress.from_json(json.dumps(OLD))
    assert json.loads(p.to_json()) == OLD and Progress.from_json(p.to_json()) == p
    assert Progress() == Progress.from_json(Progress().to_json()) and Progress().best_acc == -1.0


def test_next_epoch_resets_the_epochs_running_sums_only():
    p = Progress.from_json(json.dumps(OLD))
    p.next_epoch()
    assert (p.epoch, p.batches_done, p.loss_sum, p.correct, p.seen, p.seconds) == (3, 0, 0.0, 0, 0, 0.0)
    assert (p.failed, p.best_acc, p.best_epoch, p.stale_epochs, len(p.history)) == (1, 0.5, 1, 1, 1)
