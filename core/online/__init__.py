"""The online path: how an API process has a trip predicted while its client waits.

    HTTP request (apps/)
      │ RequestPolicy: its Deadline (deadline), version, what a timeout gets (apps.checks)
      v
    admission        refuse at once what could not be answered in time       (admission)
      v
    micro-batch      requests of one event-loop turn travel as one task      (microbatch)
      v
    sender           columns + expiry = the deadline, LPUSH by task name     (sender, protocol)
      │                 broker health: ping, queue depths                    (broker)
      v                 which version answers: workers, routing, canary      (fleet, routing)
    queue (Redis) ──> worker (tasks.trip.tasks.predict_batch) ──> SET + PUBLISH result
      v
    result inbox     one PSUBSCRIBE per process; missed results read back    (inbox)
      v
    reply            each waiting future, failed at its Deadline if no answer came
                     (TripReply / BatchReply, or 504, or 202 and an async job)

`client.PredictionClient` composes these parts for the API, `tripq predict` and `tripq score`;
the broker's and the fleet's background reads run as `watch.Watch` loops.
"""
