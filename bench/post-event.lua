-- wrk script: every request is an asynchronous invocation (an event).
wrk.method = "POST"
wrk.headers["Gust-Invocation-Type"] = "Event"
wrk.headers["ce-type"] = "dev.gust.bench"
wrk.body = '{"n":1}'
