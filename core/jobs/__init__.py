"""Answering later: async jobs in Redis, the worker that runs them, their signed webhooks.

    API ─ encode_job_payload ─ JobStore.create ─> tripq:job:<id> + a run_job task (one script)
    worker: tasks.trip.jobs.run_job ─> JobExecution.run
        JobRunner.claim ─ decode_job_payload (JobPayload) ─ predict ─ JobRunner.finish
        a job that concludes with a callback_url ─> tripq:webhooks
    worker thread: WebhookDelivery.run ─ WebhookQueue.take ─ POST signed ─ WebhookQueue.record
    API ─ JobStore.read / cancel ─> the job's view (JobReply)

    schemas.py    JobTrip, JobBatch (in), JobPayload (API -> worker), JobState, JobReply (out)
    payload.py    encode_job_payload (API), decode_job_payload (worker)
    store.py      the job hash and its Lua scripts: JobStore (API), JobRunner (worker)
    execution.py  JobExecution: one job, claimed, predicted, recorded
    schedule.py   WebhookQueue: the shared schedule of due deliveries
    delivery.py   WebhookDelivery: the delivery loop of a worker process
    webhooks.py   signing and checking bodies, and the public-address rule

The API and the workers share the keys and scripts of store.py and schedule.py, nothing else.
"""
