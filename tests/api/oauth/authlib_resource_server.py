"""A resource server protected by Authlib's RFC 7662 support, pointed at patd.

Authlib (https://authlib.org) is a widely used Python OAuth library: its
OAuth2Session.introspect_token sends the RFC 7662 request (HTTP Basic client
authentication, client_secret_basic), and a ResourceProtector with an
IntrospectTokenValidator decides a request from the answer. This script only
drives the library and prints what it concluded, one JSON line per case; the
Rust test asserts.

Usage: authlib_resource_server.py URL CLIENT_ID CLIENT_SECRET < cases
where each input line is `<bearer token> <required scopes, comma-separated or ->`.
"""

import json
import os
import sys

# patd's tests speak plain HTTP on 127.0.0.1; Authlib insists on HTTPS otherwise.
os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"

from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc6749 import ResourceProtector
from authlib.oauth2.rfc6749.errors import OAuth2Error
from authlib.oauth2.rfc7662 import IntrospectTokenValidator
from authlib.oauth2.rfc7662.models import IntrospectionToken

url, client_id, client_secret = sys.argv[1:4]
session = OAuth2Session(client_id, client_secret)
answers = []


class PatdValidator(IntrospectTokenValidator):
    def introspect_token(self, token_string):
        response = session.introspect_token(url, token=token_string)
        answers.append(response)
        response.raise_for_status()
        return IntrospectionToken(response.json())


class Request:
    def __init__(self, token):
        self.headers = {"Authorization": f"Bearer {token}"}


protector = ResourceProtector()
protector.register_token_validator(PatdValidator())

for line in sys.stdin:
    token, scopes = line.split()
    scopes = [] if scopes == "-" else scopes.split(",")
    answers.clear()
    outcome = {"token": token[:6]}
    try:
        claims = protector.validate_request(scopes, Request(token))
        outcome.update(
            verdict="allowed",
            sub=claims.sub,
            scope=claims.get_scope(),
            token_type=claims.token_type,
            jti=claims.jti,
            expires_at=claims.get_expires_at(),
        )
    except OAuth2Error as error:
        outcome["verdict"] = error.error
    except Exception as error:  # the library could not use the answer at all
        outcome["verdict"] = f"failed: {type(error).__name__}: {error}"
    if answers:
        response = answers[-1]
        outcome.update(
            status=response.status_code,
            content_type=response.headers.get("Content-Type"),
            cache_control=response.headers.get("Cache-Control"),
        )
    print(json.dumps(outcome), flush=True)
