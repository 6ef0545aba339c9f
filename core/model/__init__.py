"""The model: stored, verified, loaded once per worker, fed columns; and trained.

Serving (a worker):

    registry (card.json, CURRENT: no scikit-learn)
      v
    artifact.load_model   sha256 of the bytes, skops allow-list, pipeline shape, smoke test
      │                   the recipe's shape from recipes (gbm, baseline)
      v
    TripModel.predict(TripColumns)
      ├ gbm:      features.TripFeatures.transform_columns ─> trees (scikit-learn or compiled C)
      └ baseline: recipes.LinearScorer (a weight per zone pair, one for distance)
      v
    shelf   a worker's loaded versions, current and pinned, swapped live
    rollout promoting a version to the fleet (check, write routing, await followers)

Training (the CLI):

    tlc (read a TLC file, fetch a month) ─> training (fit, evaluate) ─> artifact.save_model
      ─> report (metrics by borough, plots, report.html)

The classes an artifact holds live in features (TripFeatures, _Means) and trees
(PickupAwareRegressor): skops names them by module, so they stay where they are.
"""
