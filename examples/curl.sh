#!/usr/bin/env bash
# The signing API with curl: certificates, the JWKS, one client token, one access token, a
# verification, and a batch sent whole (--data-binary: curl sends the body, then reads).
#   bash curl.sh DIR     (DIR: an appliance folder from `sitesign quickstart`, default ./var)
set -euo pipefail
dir="${1:-./var}"
api="${SITESIGN_API:-https://127.0.0.1:8443}"
mtls=(curl -sS --fail-with-body --cacert "$dir/ca.pem" --cert "$dir/mp/mp.crt" --key "$dir/mp/mp.key")
json=(-H 'content-type: application/json')

"${mtls[@]}" "$api/v1/certificates" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["certificates"]), "certificates")'
"${mtls[@]}" "$api/.well-known/jwks.json" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["keys"]), "signing keys in the JWKS")'

device=GUID:8D2B7C6E-1F3A-4B5C-9D8E-7F6A5B4C3D2E
thumbprint=q1MKE5hX1uWoOlxMqk1B7v4HnpnZz3jOhP1ZbpQ6sGA
client=$("${mtls[@]}" "${json[@]}" --data-binary \
  "{\"device_id\":\"$device\",\"client_cert_thumbprint\":\"$thumbprint\",\"proof\":{\"kind\":\"internal\"}}" \
  "$api/v1/client-tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
echo "client token: ${client:0:40}…"
"${mtls[@]}" "${json[@]}" --data-binary "{\"token\":\"$client\",\"client_cert_thumbprint\":\"$thumbprint\"}" \
  "$api/v1/access-tokens" | python3 -c 'import json,sys; print("access token expires", json.load(sys.stdin)["expires"])'
"${mtls[@]}" "${json[@]}" --data-binary "{\"token\":\"$client\",\"client_cert_thumbprint\":\"$thumbprint\"}" \
  "$api/v1/tokens:verify" | python3 -c 'import json,sys; v=json.load(sys.stdin); print("verify:", v["valid"], v.get("kind"))'

# A batch of three registrations, sent whole; three answer lines come back in order.
batch=$(for n in 1 2 3; do
  printf '{"device_id":"GUID:00000000-0000-4000-8000-00000000000%d","client_cert_thumbprint":"%s","proof":{"kind":"internal"}}\n' "$n" "$thumbprint"
done)
printf '%s\n' "$batch" | "${mtls[@]}" -H 'content-type: application/x-ndjson' --data-binary @- \
  "$api/v1/client-tokens:batch" | python3 -c 'import json,sys; a=[json.loads(l) for l in sys.stdin]; print(len(a), "batch answers,", sum("token" in x for x in a), "tokens")'
