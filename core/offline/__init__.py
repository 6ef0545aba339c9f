"""Offline scoring: a whole trip file through the queue, in chunks, resumable (`tripq score`).

    reading   read_trips ─> as_floats, pickup_times      the input's columns as numbers
      v
    plan      core.trip.contract.check_columns, chunks, what an earlier run finished
      v
    scoring   each chunk's valid rows ─> PredictionClient.predict_columns ─> workers,
              several in flight, sent again after a timeout; then the parts joined
      v
    parts     <OUTPUT>.parts/ (manifest, chunk parts) ─> OUTPUT + <stem>.rejected.csv

The workers answer through the online model path, unchanged (core.online.client).
"""
