-- wrk script of bench_driver: POST /echo with the JSON body in the file
-- named by ECHO_BODY (bench/echo.json).
local file = assert(io.open(os.getenv("ECHO_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
wrk.headers["Content-Type"] = "application/json"
file:close()
