"""The trip: what a caller sends, the contract it must meet, the shapes it takes on its way.

A trip is named by its columns (contract) from the request to the model:

    TripRequest / BatchRequest (in, schemas)     JSON from a caller, checked field by field
      │ pickup_datetime ─> New York wall-clock seconds                   (pickup)
      v
    TripColumns (schemas)      the batch a task carries: one list per contract column
      v
    worker ─> BatchPrediction (schemas) ─> TripReply / BatchReply / ErrorReply (out, schemas)

Its modules:

    contract        the column names, their limits (zones 1..265, miles, pickup years), and
                    the one vectorised check of columns that offline scoring uses; the request
                    models take their Field limits from it
    pickup          pickup times: New York wall clock, the years accepted
    schemas         the pydantic models above
    batch_request   reading a batch: the envelope must be right, each trip may be wrong alone
"""
