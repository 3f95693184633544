#!/bin/sh
# make-certs.sh DIR [REPLICAS [NAMESPACE]]: the certificates of meshcached.yaml's pods.
#
# Makes (or keeps, when they exist) a CA and one certificate per pod meshcached-0 ..
# meshcached-(REPLICAS-1), named after the pod and valid for its DNS names under the
# meshcached-peers Service, and lays out DIR/secret as the meshcached-certs Secret holds it:
# ca.crt, and meshcached-N.crt / meshcached-N.key for each pod. The CA key is DIR/ca-key/ca.key:
# keep it off the cluster (it signs new nodes). Then:
#
#   kubectl -n NAMESPACE create secret generic meshcached-certs --from-file=DIR/secret/
set -eu
if [ "$#" -lt 1 ]; then
    echo "usage: make-certs.sh DIR [REPLICAS [NAMESPACE]]" >&2
    exit 2
fi
dir=$1
replicas=${2:-3}
namespace=${3:-default}
if [ ! -e "$dir/ca/ca.crt" ]; then
    meshcached certs create-ca --certs-dir "$dir/ca" --ca-key "$dir/ca-key/ca.key"
fi
mkdir -p "$dir/secret"
cp "$dir/ca/ca.crt" "$dir/secret/ca.crt"
i=0
while [ "$i" -lt "$replicas" ]; do
    pod=meshcached-$i
    if [ ! -e "$dir/nodes/$pod/node.crt" ]; then
        meshcached certs create-node "$pod.meshcached-peers.$namespace.svc.cluster.local" \
            "$pod.meshcached-peers.$namespace.svc" "$pod.meshcached-peers" \
            --name "$pod" --certs-dir "$dir/nodes/$pod" \
            --ca-cert "$dir/ca/ca.crt" --ca-key "$dir/ca-key/ca.key"
    fi
    cp "$dir/nodes/$pod/node.crt" "$dir/secret/$pod.crt"
    (umask 077 && cp "$dir/nodes/$pod/node.key" "$dir/secret/$pod.key")
    i=$((i + 1))
done
echo "now: kubectl -n $namespace create secret generic meshcached-certs --from-file=$dir/secret/"
