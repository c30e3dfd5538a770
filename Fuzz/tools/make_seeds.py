#!/usr/bin/env python3
"""Writes the seed corpora under Fuzz/corpus/<target>/ (run from anywhere; rewrites the seeds).

Every seed is small and meaningful: real startup packets and protocol messages, the RFC 7677
SCRAM exchange, SQL statements of each kind the classifier handles, admin API requests, the
configuration examples of README.md, and IAM tokens signed like botocore's
generate_db_auth_token. Deterministic: the same files every run.
"""
import base64, hashlib, hmac, os, random, struct, sys, urllib.parse
from datetime import datetime, timezone

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def write(target, name, data):
    folder = os.path.join(ROOT, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- wire
def startup(params, version=196608):
    body = struct.pack("!I", version) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def msg(t, body):
    return t + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return (s.encode() if isinstance(s, str) else s) + b"\0"


SSL = struct.pack("!II", 8, 80877103)
GSS = struct.pack("!II", 8, 80877104)
write("startup", "startup-user-database", startup([("user", "app"), ("database", "appdb")]))
write("startup", "startup-psql", startup([("user", "app"), ("database", "appdb"), ("application_name", "psql"),
                                          ("client_encoding", "UTF8"), ("options", "-c search_path=public")]))
write("startup", "startup-pq-option", startup([("user", "app"), ("_pq_.protocol_managed_params", "x")], 196610))
write("startup", "startup-repeated", startup([("user", "a"), ("user", "b"), ("database", "d")]))
write("startup", "startup-many", startup([("p%d" % i, "v%d" % i) for i in range(20)] + [("p3", "again")]))
write("startup", "ssl-then-startup", SSL + startup([("user", "app")]))
write("startup", "gssenc", GSS)
write("startup", "cancel", struct.pack("!IIii", 16, 80877102, 4242, -7))
write("startup", "protocol-2", startup([("user", "app")], 131072))
write("startup", "unknown-code", struct.pack("!II", 8, 80877199))
write("startup", "truncated", startup([("user", "app")])[:11])

parse = msg(b"P", cstr("s1") + cstr("SELECT $1::int") + struct.pack("!hI", 1, 23))
bind = msg(b"B", cstr("") + cstr("s1") + struct.pack("!hh", 1, 0) + struct.pack("!hi", 1, 2) + b"42" + struct.pack("!h", 0))
describe = msg(b"D", b"P" + cstr(""))
execute = msg(b"E", cstr("") + struct.pack("!i", 0))
sync = msg(b"S", b"")
write("frontend", "query", b"\x03" + msg(b"Q", cstr("SELECT 1")))
write("frontend", "query-set", b"\x03" + msg(b"Q", cstr("SET search_path = 'x'; SELECT 1")))
write("frontend", "extended", b"\x02" + parse + bind + describe + execute + sync)
write("frontend", "close-statement", b"\x02" + msg(b"C", b"S" + cstr("s1")) + sync)
write("frontend", "password", b"\x01" + msg(b"p", cstr("md5" + "0" * 32)))
write("frontend", "sasl-initial", b"\x01" + msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", 32) + b"n,,n=,r=rOprNGfwEbeRWgbNEkqO1234"))
write("frontend", "sasl-initial-null", b"\x01" + msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", -1)))
write("frontend", "terminate", b"\x00" + msg(b"X", b""))
write("frontend", "too-large", b"\x00" + msg(b"Q", cstr("SELECT 'a long enough statement'")))
write("frontend", "bad-length", b"\x03" + b"Q\x00\x00\x00\x02")
backend = (msg(b"R", struct.pack("!i", 10) + cstr("SCRAM-SHA-256") + b"\0") + msg(b"R", struct.pack("!i", 5) + b"abcd")
           + msg(b"S", cstr("TimeZone") + cstr("UTC")) + msg(b"K", struct.pack("!ii", 1, 2)) + msg(b"Z", b"I"))
write("frontend", "backend-login", b"\x03" + backend)
rows = (msg(b"T", struct.pack("!h", 1) + cstr("a") + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0))
        + msg(b"D", struct.pack("!hi", 2, 1) + b"x" + struct.pack("!i", -1)) + msg(b"C", cstr("SELECT 1"))
        + msg(b"E", b"SERROR\0C42P01\0Mno such table\0\0") + msg(b"N", b"SNOTICE\0Mhi\0\0")
        + msg(b"v", struct.pack("!ii", 0, 1) + cstr("_pq_.x")))
write("frontend", "backend-rows", b"\x03" + rows)

# ---------------------------------------------------------------- scram (RFC 7677)
CF = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
CFIN = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
write("scram", "rfc7677", b"\x00" + CF + b"\n" + CFIN)
write("scram", "rfc7677-wrong-proof", b"\x00" + CF + b"\n" + CFIN.replace(b"dHzb", b"dHzc"))
write("scram", "extensions", b"\x00" + b"y,,n=,r=abc,x=ext\nc=eSws,r=abc%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,y=1,p=AAAA")
write("scram", "channel-binding", b"\x00p=tls-server-end-point,,n=,r=abc")
write("scram", "authzid", b"\x00n,a=admin,n=,r=abc")
write("scram", "initial-response", b"\x01" + cstr("SCRAM-SHA-256") + struct.pack("!i", len(CF)) + CF)
salt = bytes([1, 2, 3, 4])
inner = hashlib.md5(b"secret" + b"app").hexdigest().encode()
write("scram", "md5-correct", b"\x02md5" + hashlib.md5(inner + salt).hexdigest().encode())
write("scram", "md5-wrong", b"\x02md5" + b"0" * 32)
salted = hashlib.pbkdf2_hmac("sha256", b"pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
client_key = hmac.new(salted, b"Client Key", "sha256").digest()
stored = hashlib.sha256(client_key).digest()
server_key = hmac.new(salted, b"Server Key", "sha256").digest()
verifier = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$%s:%s" % (base64.b64encode(stored).decode(), base64.b64encode(server_key).decode())
write("scram", "verifier", b"\x03" + verifier.encode())
write("scram", "verifier-md5", b"\x03md5" + inner)

# ---------------------------------------------------------------- SQL
statements = {
    "select": "SELECT 1",
    "set": "SET search_path TO public, \"My Schema\"",
    "set-local": "SET LOCAL statement_timeout = '5s'",
    "set-timezone": "SET TIME ZONE 'UTC'; SET application_name = e'x\\'y'",
    "set-config": "SELECT set_config('search_path', 'x', false)",
    "reset": "RESET ALL; RESET timezone",
    "discard": "DISCARD ALL; DISCARD TEMP; DISCARD PLANS; DISCARD SEQUENCES",
    "deallocate": "DEALLOCATE PREPARE \"S_1\"",
    "deallocate-all": "DEALLOCATE ALL",
    "prepare": "PREPARE q (int) AS SELECT $1; EXECUTE q(1)",
    "execute": "EXECUTE stmt_1 (1, 'x')",
    "listen": "LISTEN chan; UNLISTEN *; NOTIFY chan, 'x'",
    "begin": "BEGIN ISOLATION LEVEL SERIALIZABLE; COMMIT",
    "copy": "COPY t (a, b) FROM STDIN WITH (FORMAT csv)",
    "temp": "CREATE TEMP TABLE t AS SELECT 1; SELECT * INTO TEMPORARY x FROM t; CREATE TABLE pg_temp.y (a int)",
    "cursor": "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "advisory": "SELECT pg_advisory_lock(1), pg_try_advisory_lock(2); SELECT pg_advisory_unlock_all()",
    "sequence": "SELECT nextval('s'), currval('s'), setval('s', 1), lastval()",
    "load": "LOAD 'auto_explain'",
    "set-role": "SET ROLE admin; SET SESSION AUTHORIZATION DEFAULT; RESET ROLE",
    "dollar": "DO $body$ BEGIN PERFORM 1; END $body$; SELECT $$a$b$$",
    "comments": "/* outer /* nested */ still */ SET -- trailing\n x = 1",
    "unicode": "SELECT U&'d\\0061t\\+000061' UESCAPE '\\', U&\"i\\0064\" FROM \"o'neil\"",
    "strings": "SELECT E'\\\\', B'101', X'ff', N'n', 'it''s', 'a' 'b'",
    "unterminated": "SELECT 'never closed",
    "numbers": "SELECT 0x1F, 1e-3, .5, 1_000, 0b101, $1",
    "alter-role": "ALTER ROLE app PASSWORD 'secret' VALID UNTIL 'infinity'",
    "semicolons": ";;SELECT 1;;",
    "with-into": "WITH x AS (SELECT 1) SELECT * INTO TEMP y FROM x",
    "close-all": "CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); RESET SESSION AUTHORIZATION",
}
for name, sql in statements.items():
    write("classify", name, sql)

# The redact target reads its input as choices (SQLTargets.redact): a few hand-made programs
# (one per quoting style) and random ones.
rng = random.Random(16)
for conforming in (0, 1):  # the first choice: standard_conforming_strings on (0) or off (1)
    for style in range(9):
        # 2 tokens (keyword ALTER ROLE, space), the secret: before/after runs, literal container, style
        write("redact", "style-%d%s" % (style, "" if conforming == 0 else "-scs-off"),
              bytes([conforming, 2, 0, 2, 0, 0, 3]) + b"a\\c" + bytes([2]) + b"x'" + bytes([2 + style, style, 1, 1, 0]) + b"; SELECT 1")
write("redact", "comment", bytes([0, 1, 3, 1, 0, 4]) + b"a*/b" + bytes([0, 0, 2]) + b" -- tail")
write("redact", "line-comment", bytes([1, 0, 5]) + b"it's " + bytes([0, 1, 1]))
for i in range(12):
    write("redact", "random-%02d" % i, bytes(rng.randrange(256) for _ in range(rng.randrange(20, 90))))

# ---------------------------------------------------------------- JSON
bodies = {
    "modify-proxy": '{"DBProxyName": "app", "IdleClientTimeout": 60, "RequireTLS": false, "DebugLogging": true}',
    "modify-pool": '{"TargetGroupName": "default", "ConnectionPoolConfig": {"MaxConnectionsPercent": 50, '
                   '"MaxIdleConnectionsPercent": 20, "ConnectionBorrowTimeout": 30, "SessionPinningFilters": '
                   '["EXCLUDE_VARIABLE_SETS"], "InitQuery": "SET x = 1"}}',
    "targets": '{"DBInstanceIdentifiers": ["127.0.0.1:5433", "[::1]:5432"]}',
    "policy": '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["rds-db:connect"], '
              '"Resource": "arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-*/app", "Condition": null}]}',
    "escapes": '["\\u00e9\\ud83d\\ude00", "\\"\\\\\\/\\b\\f\\n\\r\\t", -0.5e+10, 1E2, 0, true, false, null, {}]',
    "secret": '{"username": "app", "password": "s3cr3t", "host": "db", "port": 5432, "engine": "postgres"}',
    "duplicate": '{"a": 1, "a": 2}',
    "deep": "[" * 70 + "]" * 70,
    "lone-surrogate": '"\\ud800"',
    "trailing": '{"a": 1} x',
}
for name, text in bodies.items():
    write("json", name, text)

# ---------------------------------------------------------------- admin HTTP (first byte: flags)
def http(method, path, body=None, token=False, extra=""):
    head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1:9187\r\n%s" % (method, path, extra)
    if token:
        head += "Authorization: Bearer fuzz-token\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body.encode())
    return (head + "\r\n" + (body or "")).encode()

write("admin_http", "healthz", b"\x00" + http("GET", "/healthz"))
write("admin_http", "describe", b"\x01" + http("GET", "/v1/db-proxies?DBProxyName=app", token=True))
write("admin_http", "unauthorized", b"\x01" + http("GET", "/v1/db-proxies", extra="Authorization: Bearer nope\r\n"))
write("admin_http", "modify-proxy", b"\x00" + http("PATCH", "/v1/db-proxies/app", bodies["modify-proxy"]))
write("admin_http", "modify-pool", b"\x00" + http("PATCH", "/v1/db-proxies/app/target-groups/default", bodies["modify-pool"]))
write("admin_http", "target-groups", b"\x00" + http("GET", "/v1/db-proxies/app/target-groups?TargetGroupName=default"))
write("admin_http", "register", b"\x00" + http("POST", "/v1/db-proxies/app/targets", '{"DBInstanceIdentifiers": ["127.0.0.1:5433"]}'))
write("admin_http", "deregister", b"\x00" + http("DELETE", "/v1/db-proxies/app/targets?TargetGroupName=default",
                                                 '{"DBInstanceIdentifiers": ["127.0.0.1:2"]}'))
write("admin_http", "metrics", b"\x00" + http("GET", "/metrics"))
write("admin_http", "pipelined", b"\x02" + http("GET", "/healthz") + http("GET", "/v1/db-proxies/app/targets")
      + http("PUT", "/v1/db-proxies/%61pp", '{"IdleClientTimeout": 0}'))
write("admin_http", "chunked", b"\x04" + b"PATCH /v1/db-proxies/app HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      b"5\r\n{\"Deb\r\n10\r\nugLogging\": true}\r\n0\r\n\r\n")
write("admin_http", "http10-close", b"\x06" + b"GET /v1/db-proxies HTTP/1.0\r\nConnection: close\r\n\r\n")
write("admin_http", "bad-request", b"\x00" + b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
write("admin_http", "not-json", b"\x00" + http("POST", "/v1/db-proxies/app/targets", "not json"))

# ---------------------------------------------------------------- configuration
configs = {
    "minimal": """proxies:
  - name: app
    engine_family: POSTGRESQL
    listen: "0.0.0.0:5432"
    auth:
      - secret_arn: "env:APP_SECRET"
    target_group:
      targets:
        - endpoint: "10.0.0.11:5432"
""",
    "full": """drain_timeout: 30
proxies:
  - name: app
    engine_family: POSTGRESQL
    listen: "0.0.0.0:5432"
    endpoints: [{ name: app-ro, target_role: READ_ONLY, listen: "0.0.0.0:5433" }]
    require_tls: false
    idle_client_timeout: 1800
    max_client_connections: 10000
    debug_logging: false
    max_message_size: 67108864
    auth:
      - auth_scheme: SECRETS
        secret_arn: "file:secrets/app_user.json"
        iam_auth: DISABLED
        client_password_auth_type: POSTGRES_SCRAM_SHA_256
    target_group:
      connection_pool_config:
        max_connections_percent: 100
        max_idle_connections_percent: 50
        connection_borrow_timeout: 120
        session_pinning_filters: [EXCLUDE_VARIABLE_SETS]
        init_query: "SET x = 1"
        backend_idle_timeout: 60
      health_check: { interval_ms: 500, timeout_ms: 1000, database: postgres }
      targets:
        - endpoint: "127.0.0.1:5432"
        - endpoint: "[::1]:5433"
admin:
  listen: "127.0.0.1:9187"
  token: "env:CONCIERGE_ADMIN_TOKEN"
""",
    "iam-tls": """secret_refresh_interval: 300
secrets_manager:
  endpoint: "http://127.0.0.1:5000"
  access_key_id: AKIAEXAMPLE
  secret_access_key: "env:SM_SECRET_KEY"
iam:
  region: us-east-1
  account_id: "123456789012"
  identities:
    - access_key_id: AKIAEXAMPLE
      secret_access_key: "file:keys/app.key"
      arn: "arn:aws:iam::123456789012:user/app"
      policy:
        Version: "2012-10-17"
        Statement:
          - Effect: Allow
            Action: "rds-db:connect"
            Resource: "arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-*/app"
proxies:
  - name: app
    resource_id: prx-0123456789abcdef0
    hostnames: [db-proxy.example.com]
    require_tls: true
    tls:
      certificate_file: certs/proxy.crt
      private_key_file: certs/proxy.key
    auth:
      - secret_arn: "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf"
        iam_auth: REQUIRED
    target_group:
      tls:
        mode: verify-full
        ca_file: certs/db-ca.pem
      targets:
        - endpoint: "db.internal:5432"
""",
    "anchors": """defaults: &d
  secret_arn: "env:A"
proxies:
  - name: a
    auth: [*d, {<<: *d, secret_arn: "env:B"}]
    target_group: {targets: [{endpoint: "h:1"}]}
""",
    "errors": """proxies:
  - name: ""
    listen: "nope"
    idle_client_timeout: -1
    unknown_key: 1
    auth: []
    target_group: {targets: []}
  - name: ""
""",
    "deep-flow": "proxies: " + "[" * 70 + "]" * 70 + "\n",
    "deep-block": "proxies:\n" + "".join("  " * i + "- \n" for i in range(8)) + "".join("- " for _ in range(70)) + "x\n",
    "quoted": "proxies: 'it''s [not] {nested}' # [[[\nadmin: \"a\\\"[b\"\n",
    "aliases": """iam:
  region: us-east-1
  account_id: "123456789012"
  identities:
    - access_key_id: AKIAEXAMPLE
      secret_access_key: "env:K"
      arn: "arn:aws:iam::123456789012:user/app"
      policy:
        Anchors: [&a0 [x, x, x], &a1 [*a0, *a0, *a0], &a2 [*a1, *a1, *a1]]
        Statement: *a2
proxies: []
""",
    "empty": "",
    "null": "~\n",
}
for name, text in configs.items():
    write("config", name, text)

# ---------------------------------------------------------------- IAM tokens (botocore's signing)
def sign(key, message):
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def token(host, port, user, region, when, access_key="AKIDEXAMPLE", secret="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
          session=None, expires=900):
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    datestamp = amz_date[:8]
    scope = "%s/%s/rds-db/aws4_request" % (datestamp, region)
    params = [("Action", "connect"), ("DBUser", user), ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
              ("X-Amz-Credential", "%s/%s" % (access_key, scope)), ("X-Amz-Date", amz_date), ("X-Amz-Expires", str(expires)),
              ("X-Amz-SignedHeaders", "host")]
    if session:
        params.append(("X-Amz-Security-Token", session))
    q = lambda s: urllib.parse.quote(s, safe="-_.~")
    query = "&".join("%s=%s" % (q(k), q(v)) for k, v in sorted(params))
    signed_host = host.lower() if port == 443 else "%s:%d" % (host.lower(), port)
    canonical = "\n".join(["GET", "/", query, "host:%s\n" % signed_host, "host", hashlib.sha256(b"").hexdigest()])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = sign(("AWS4" + secret).encode(), datestamp)
    k = sign(sign(sign(k, region), "rds-db"), "aws4_request")
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    return "%s:%d/?%s&X-Amz-Signature=%s" % (host, port, query, signature)


when = datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
write("iam_token", "token", token("db-proxy.example.com", 5432, "app", "us-east-1", when))
write("iam_token", "token-443", token("DB.example.com", 443, "app user", "eu-west-1", when))
write("iam_token", "token-session", token("127.0.0.1", 6432, "ap@p", "us-east-1", when, session="FQoGZXIvYXdzEXAMPLE//+=="))
write("iam_token", "token-ipv6", token("[::1]", 5432, "app", "us-east-1", when, expires=60))
write("iam_token", "token-bad-signature", token("h", 5432, "u", "r", when)[:-1] + "g")
write("iam_token", "token-duplicate", token("h", 5432, "u", "r", when) + "&Action=connect")
write("iam_token", "token-bad-escape", "h:5432/?Action=connect&DBUser=%zz")
write("iam_token", "generate-1", b"\x01" + bytes([5]) + b"dbhost" + bytes([3]) + b"app" + bytes([9]) + b"us-east-1" + bytes([0, 42]))
write("iam_token", "generate-2", b"\x01" + bytes([1, 10, 0, 0, 1]) + bytes([7]) + b"\xff\xfe\x80abc/" + bytes([2]) + b"eu" + bytes([1, 255]))
write("iam_token", "generate-3", b"\x01" + bytes([2, 4]) + b"fe80" + bytes([4]) + b"user" + bytes([1]) + b"x" + bytes([3, 7]))
print("seeds written under", os.path.normpath(ROOT))
