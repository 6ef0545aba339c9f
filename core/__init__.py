"""The domain: everything tripq knows, in rooms that say what they own.

    trip/      the trip contract: column names, limits, one check; request and reply shapes
    online/    answering now: the prediction client, micro-batching, admission, deadlines, routing
    jobs/      answering later: async jobs in Redis, their runner, signed webhooks
    model/     model lifecycle: registry, verified artifacts, features, compiled trees, training
    offline/   whole files scored through the fleet (`tripq score`)
    worker/    what a worker process runs beside its tasks: heartbeat, routing follower
    infra/     Redis clients, the embedded Redis, logs, metrics, tracing, processes, files
    errors.py  the one error tree, mapped to replies in apps/

trip/ and infra/ import no other room: every room may use them. Nothing here imports FastAPI or
knows an HTTP status, and only model/ imports scikit-learn (so the API process never loads it).
"""
