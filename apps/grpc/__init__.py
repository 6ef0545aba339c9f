"""tripq's gRPC door: tripq.v1.TripService beside the HTTP API, in a process of its own.

    protos/tripq/v1/trip.proto   the contract; its stubs are generated beside it (stubs.py)
    servicer.py                  Predict, PredictBatch, PredictStream on the HTTP path's parts
    status.py                    tripq's errors as gRPC status codes, with their details
    server.py                    the process: grpc.aio, health (grpc.health.v1), reflection

Run it with `tripq grpc`; `tripq up` starts it beside the API.
"""
