#!/bin/sh
# meshcached's container entrypoint (deploy/container/Dockerfile installs it as
# /usr/local/bin/meshcached-entrypoint).
#
#   meshcached-entrypoint make-certs CA_KEY CERTS NODE...
#       The compose file's certificate step: once per cluster a CA (its key at CA_KEY, its
#       certificate at CERTS/ca.crt), and for each NODE the directory CERTS/NODE holding
#       ca.crt, node.crt and node.key, NODE being the node's name and host name. What exists
#       is kept, so the step can run at every `docker compose up`, and adding a NODE later
#       signs it with the same CA.
#
#   meshcached-entrypoint [FLAGS...]
#       A node: exec meshcached FLAGS... (it replaces this shell, so SIGTERM reaches it).
#       With MESHCACHED_CERTS_FROM=DIR, a directory holding ca.crt and NAME.crt/NAME.key for
#       every node (the Kubernetes Secret of deploy/kubernetes), this node's pair is first
#       copied to MESHCACHED_CERTS_DIR as node.crt/node.key (readable by its user only), NAME being
#       MESHCACHED_NODE_NAME: a StatefulSet gives every pod the same volumes.
set -eu

make_certs() {
    if [ "$#" -lt 3 ]; then
        echo "usage: meshcached-entrypoint make-certs CA_KEY CERTS NODE..." >&2
        exit 2
    fi
    ca_key=$1
    certs=$2
    shift 2
    if [ ! -e "$certs/ca.crt" ]; then
        meshcached certs create-ca --certs-dir "$certs" --ca-key "$ca_key"
    fi
    for node in "$@"; do
        if [ -e "$certs/$node/node.crt" ]; then
            echo "$certs/$node/node.crt exists: kept"
            continue
        fi
        meshcached certs create-node "$node" --name "$node" --certs-dir "$certs/$node" \
            --ca-cert "$certs/ca.crt" --ca-key "$ca_key"
    done
}

select_certs() {
    from=$MESHCACHED_CERTS_FROM
    name=${MESHCACHED_NODE_NAME:?MESHCACHED_NODE_NAME must name this node when MESHCACHED_CERTS_FROM is set}
    dir=${MESHCACHED_CERTS_DIR:?MESHCACHED_CERTS_DIR must say where this node certificates go}
    for f in ca.crt "$name.crt" "$name.key"; do
        if [ ! -r "$from/$f" ]; then
            echo "meshcached-entrypoint: $from/$f is missing: the certificates secret has no pair for node $name (deploy/kubernetes/make-certs.sh)" >&2
            exit 1
        fi
    done
    (
        umask 077
        mkdir -p "$dir"
        cp "$from/ca.crt" "$dir/ca.crt.new" && mv "$dir/ca.crt.new" "$dir/ca.crt"
        cp "$from/$name.crt" "$dir/node.crt.new" && mv "$dir/node.crt.new" "$dir/node.crt"
        cp "$from/$name.key" "$dir/node.key.new" && mv "$dir/node.key.new" "$dir/node.key"
    )
}

if [ "${1:-}" = make-certs ]; then
    shift
    make_certs "$@"
    exit 0
fi
if [ -n "${MESHCACHED_CERTS_FROM:-}" ]; then
    select_certs
fi
exec meshcached "$@"
