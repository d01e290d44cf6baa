"""``tg-gateway load``: synthetic conversations through the webhook, end-to-end latency
(webhook in -> Bot API call out) split into the pipeline's, the limiter's and the
gateway's own share (issue 12). ``synth`` makes the updates, ``measure`` splits the
latencies (pure), ``run`` drives a deployment and collects, ``report`` prints and plots."""
