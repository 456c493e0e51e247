"""k-fold cross-validation folds of the training split."""

from __future__ import annotations

import numpy as np
import pytest

from mtl_core.data import prepare


def test_cv_folds_partition_the_training_rows_and_refit_preprocessing(
    make_frame, file_config, tmp_path
):
    path = tmp_path / "d.csv"
    make_frame(400).to_csv(path, index=False)
    data = prepare(file_config(path))
    train = data.splits["train"]
    folds = data.cv_folds(4, seed=0)
    assert len(folds) == 4
    held_out = [set(f.splits["val"].rows["rid"]) for f in folds]
    assert set().union(*held_out) == set(train.rows["rid"])
    assert sum(len(h) for h in held_out) == len(train)  # disjoint
    others = set(data.splits["val"].rows["rid"]) | set(data.splits["test"].rows["rid"])
    rate = np.nanmean(train.y["bin"])
    for fold, rids in zip(folds, held_out, strict=True):
        assert set(fold.splits) == {"train", "val"}  # no test split to read
        assert not (set(fold.splits["train"].rows["rid"]) | rids) & others
        assert not set(fold.splits["train"].rows["rid"]) & rids
        # Stratified on the first classification task (bin, about 30 % ones).
        assert np.nanmean(fold.splits["val"].y["bin"]) == pytest.approx(rate, abs=0.02)
        # Scaling refitted on the fold's own training rows: standardised there, not elsewhere.
        x1 = fold.preprocessor.numeric.index("x1")
        assert fold.splits["train"].X[:, x1].mean() == pytest.approx(0.0, abs=1e-5)
        assert fold.splits["train"].X[:, x1].std() == pytest.approx(1.0, abs=1e-3)
        # Targets keep the training split's encoding: the same labels row by row.
        by_rid = dict(zip(train.rows["rid"], train.y["reg"], strict=True))
        fold_val = fold.splits["val"]
        assert np.allclose(fold_val.y["reg"], [by_rid[r] for r in fold_val.rows["rid"]])
    with pytest.raises(ValueError, match="cv_folds=1"):
        data.cv_folds(1)
