-- wrk script: POST /api/v2/users/login/ with the demo user's credentials.
wrk.method = "POST"
wrk.body = '{"username":"astravdi","password":"Bazalt1!","ldap":false}'
wrk.headers["Content-Type"] = "application/json"
