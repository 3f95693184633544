//! `PeerEndpoint::connect_any`: the chain to the cluster CA is still required, any node
//! name is accepted, and the name is read from the certificate.

use super::*;

#[tokio::test]
async fn connect_any_learns_the_name_of_the_node_it_reached() {
    let ca = generate_ca().expect("CA");
    let (a, _) = bind(identity(&ca, "node-a"));
    let (b, b_addr) = bind(identity(&ca, "node-b"));
    let b = Arc::new(b);
    let accepting = accept_in_background(b.clone());
    let dialed = within("connect_any", a.connect_any(b_addr))
        .await
        .expect("connect_any");
    let accepted = within("accept", accepting)
        .await
        .expect("accept task")
        .expect("accept");
    assert_eq!(dialed.name, "node-b", "the name comes from the certificate");
    assert_eq!(accepted.name, "node-a");
    exchange_frame(&dialed.conn, &accepted.conn).await;
    exchange_frame(&accepted.conn, &dialed.conn).await;
}

#[tokio::test]
async fn connect_any_refuses_a_server_from_another_ca() {
    // Not knowing whom to expect is no reason to trust whoever answers.
    foreign_server_is_refused(Dial::Any).await;
}

#[tokio::test]
async fn connect_any_refuses_an_expired_server() {
    expired_server_is_refused(Dial::Any).await;
}

#[tokio::test]
async fn connect_any_refuses_a_server_that_is_not_a_node() {
    let ca = generate_ca().expect("CA");
    let (a, _) = bind(identity(&ca, "node-a"));
    // Signed by our CA, valid, but its CN is not among its DNS names: no node name to report.
    let ca_key = rcgen::KeyPair::from_pem(ca.key_pem()).expect("CA key");
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.cert_der(), ca_key).expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["somewhere-else".to_string()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "node-b");
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let not_a_node = NodeIdentity {
        name: "node-b".into(),
        cert_chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        ca_certs: vec![ca.cert_der().clone()],
        not_after: SystemTime::now() + DAY,
    };
    let (b, b_addr) = bind(not_a_node);
    let b = Arc::new(b);
    let accepting = accept_in_background(b.clone());
    let err = within("connect_any", a.connect_any(b_addr))
        .await
        .expect_err("a certificate without a node name must be refused");
    match &err {
        TransportError::PeerCertificate {
            source: CertsError::Foreign { reason, .. },
            ..
        } => assert!(reason.contains("not among its DNS names"), "{err}"),
        other => panic!("expected PeerCertificate, got {other:?}"),
    }
    assert!(err.to_string().contains("not a node certificate"), "{err}");
    assert!(within("accept", accepting).await.expect("task").is_err());
}

#[tokio::test]
async fn client_from_another_ca_is_refused_when_dialing_any() {
    // Dialing without a name relaxes nothing on the server's side.
    foreign_client_is_refused(Dial::Any).await;
}
