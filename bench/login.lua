-- wrk -s login.lua: POST /auth/login again and again (set LOGIN_USER and LOGIN_PASSWORD).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format('{"username":"%s","password":"%s"}',
  os.getenv("LOGIN_USER") or "bench", os.getenv("LOGIN_PASSWORD") or "bench-password")
