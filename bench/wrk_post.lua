-- wrk: the same POST as the clients send
wrk.method = "POST"
wrk.body = '{"title":"Refund","message":{"type":"message","message":"I\'m reopening the closed case","translateLangKey":""}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer test-key"
