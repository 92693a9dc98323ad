//! Invariant 4 with real processes: a non-anchor without rights cannot change fleet policy, also
//! when it forges a change or relays one.
//!
//! The attacker is a plain node of the fleet: the test holds its key and MIC (as a compromised
//! node's operator would), speaks `nexus-peer/1` with that identity to the other plain node and
//! to the anchor, and sends hand-made envelopes for the fleet document, first pushed
//! (`config_changes`) and then carried by an automerge sync session (`config_sync`, the
//! anti-entropy path). It knows the current document from its own node's SQLite file, as a
//! compromised node would. Each envelope has exactly one defect (checked locally before it is
//! sent), so the receivers' refusal is the check under test and not an accident of crafting.
//! Every forged change also deletes the tenant record `tenants.default`, which would quarantine
//! the tenant's routes: if one landed, `GET /v1/routes` would show it as well as the fleet
//! document's digest.
//!
//! A last envelope files a fleet-document change under the attacker's own tenant document
//! (which it may write): its dependencies are fleet-document changes, so it must be refused
//! and stored nowhere.
//!
//! Positive controls in the same fleet keep the checks honest: relaying an *unaltered* anchor
//! envelope over the very same connection is accepted and reaches every node (so the
//! connection, wire form and "unchanged" checks work), and a fleet admin's route write on a
//! plain node still replicates.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, ObjType, ROOT, ReadDoc, Value as AmValue};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nexus_ca::{
    CertificateAuthority, Credentials, FleetTrust, MicProfile, NodeId, NodeKey, Role, TrustStore,
    VerifiedMic,
};
use nexus_crdt::{
    AuthorFacts, Caller, CallerRole, ChangeError, ChangeHash, ConfigDoc, DocId, FleetDoc,
    KnownAuthor, LocalAuthor, MemoryEnvelopes, PeerSync, RoutePolicy, SignedChange, SyncLimits,
    SyncPacket,
};
use nexus_tests::{Fleet, NodeProc, wait_until};
use serde_json::{Value, json};

/// The peer protocol's ALPN (node/src/peer.rs).
const ALPN_PEER: &[u8] = b"nexus-peer/1";
/// An incarnation no node reaches by restarting (they count up from 1), so the changes the test
/// makes never collide with a node's own automerge actor sequence.
const TEST_INCARNATION: u64 = u64::MAX - 7;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// What a node's data directory gives whoever holds it: key, MIC and the fleet's trust.
struct Identity {
    key: NodeKey,
    mic_der: Vec<u8>,
    mic: VerifiedMic,
    root: Vec<u8>,
    intermediates: Vec<Vec<u8>>,
}

impl Identity {
    fn load(dir: &Path) -> Identity {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let key = NodeKey::from_pkcs8_pem(&read("node.key")).unwrap();
        let mic_der = nexus_ca::pem_to_der(&read("node.pem"))
            .unwrap()
            .swap_remove(0);
        let root = nexus_ca::pem_to_der(&read("trust/root.pem"))
            .unwrap()
            .swap_remove(0);
        let intermediates = nexus_ca::pem_to_der(&read("trust/intermediates.pem")).unwrap();
        let mic = nexus_ca::read_mic(&mic_der).unwrap();
        assert_eq!(mic.public_key, key.public_key(), "{}", dir.display());
        Identity {
            key,
            mic_der,
            mic,
            root,
            intermediates,
        }
    }

    /// The facts its MIC certifies (what every receiver resolves, whatever a change claims).
    fn facts(&self) -> AuthorFacts {
        AuthorFacts {
            node_id: self.mic.node_id,
            role: self.mic.role,
            tenant: self.mic.tenant.clone(),
            site: self.mic.site.clone(),
        }
    }

    fn trust(&self) -> TrustStore {
        TrustStore::new(self.root.clone(), self.intermediates.clone()).unwrap()
    }
}

/// One mutual-TLS `nexus-peer/1` connection to a node, authenticated as `me`.
struct PeerLink {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
}

impl PeerLink {
    async fn open(me: &Identity, to: &NodeProc) -> PeerLink {
        let fleet = FleetTrust::new(me.trust());
        let mut chain = vec![me.mic_der.clone()];
        chain.extend(me.intermediates.iter().cloned());
        chain.push(me.root.clone());
        let credentials = Credentials::new(chain, &me.key).unwrap();
        let tls = nexus_ca::member_client_config(credentials, fleet, &[ALPN_PEER]);
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let node: NodeId = to.node_id.parse().unwrap();
        let connection = tokio::time::timeout(
            Duration::from_secs(10),
            endpoint
                .connect_with(
                    quinn::ClientConfig::new(Arc::new(quic)),
                    to.quic.parse().unwrap(),
                    &nexus_ca::node_server_name(&node),
                )
                .unwrap(),
        )
        .await
        .expect("the QUIC handshake finishes within 10 s")
        .unwrap();
        PeerLink {
            endpoint,
            connection,
        }
    }

    /// One request on its own bidirectional stream, as the node's peer client sends it.
    async fn request(&self, request: &Value) -> Value {
        let exchange = async {
            let (mut send, mut recv) = self.connection.open_bi().await?;
            send.write_all(&serde_json::to_vec(request)?).await?;
            send.finish()?;
            let bytes = recv.read_to_end(4 * 1024 * 1024).await?;
            anyhow::Ok(serde_json::from_slice::<Value>(&bytes)?)
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("an answer within 10 s")
            .unwrap()
    }

    fn close(self) {
        self.connection.close(0u32.into(), b"done");
        self.endpoint.close(0u32.into(), b"done");
    }
}

/// The `ConfigChanges` request carrying one envelope and the MIC sent as its author's.
fn push_request(change: &SignedChange, author_mic: &[u8]) -> Value {
    json!({
        "type": "config_changes",
        "changes": [{
            "envelope": STANDARD.encode(change.encode()),
            "author_mic": STANDARD.encode(author_mic),
        }],
    })
}

/// A route policy as `POST /v1/routes` takes it (the node fills in its tenant).
fn route(id: &str) -> Value {
    json!({
        "id": id,
        "name": format!("route {id}"),
        "tenant_id": "",
        "priority": 1,
        "match": {"source_node_ids": [], "dest_capabilities": [], "stream_modes": [], "message_types": []},
        "action": {"type": "allow"},
        "enabled": true,
        "created_at": 1
    })
}

/// A fleet-wide policy (empty tenant) denying everything: what an attacker would like to add.
fn policy(id: &str) -> RoutePolicy {
    let mut policy = route(id);
    policy["action"] = json!({"type": "deny"});
    serde_json::from_value(policy).unwrap()
}

fn fleet_admin(identity: &str) -> Caller {
    Caller {
        identity: identity.to_string(),
        role: CallerRole::FleetAdmin,
    }
}

/// The attacker's copy of the fleet document, read from its own node's SQLite file (a
/// compromised node's operator has its database): the stored chunks, loaded as the node loads
/// them, and the stored envelopes with their authors' MICs. Forged changes build on its heads,
/// so they can delete what the anchor wrote, just as a real attacker's would.
struct Replica {
    chunks: Vec<Vec<u8>>,
    envelopes: Vec<(SignedChange, Vec<u8>)>,
}

impl Replica {
    fn read(dir: &Path) -> Replica {
        let db = open_db(dir);
        let chunks = db
            .prepare("SELECT bytes FROM config_chunks WHERE doc_id = 'fleet' ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let envelopes = db
            // Each author's MIC is stored once (`config_mics`); older rows carry it inline.
            .prepare(
                "SELECT envelope, CASE WHEN length(author_mic) > 0 THEN author_mic ELSE \
                 (SELECT der FROM config_mics WHERE fingerprint = mic_fingerprint) END \
                 FROM config_changes WHERE doc_id = 'fleet'",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?)))
            .unwrap()
            .map(|row| {
                let (envelope, mic) = row.unwrap();
                (SignedChange::decode(&envelope).unwrap(), mic)
            })
            .collect();
        Replica { chunks, envelopes }
    }

    /// A fresh document holding every stored chunk.
    fn doc(&self) -> ConfigDoc {
        let mut doc = ConfigDoc::new(DocId::Fleet);
        for chunk in &self.chunks {
            doc.load_incremental(chunk).unwrap();
        }
        doc
    }
}

/// The authors named by the MICs (base64 DER) a sync answer carries, as the attacker takes
/// them (its own copy: it checks nothing).
fn directory_of(mics: &Value) -> BTreeMap<NodeId, KnownAuthor> {
    mics.as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let mic = nexus_ca::read_mic(&STANDARD.decode(m.as_str().unwrap()).unwrap()).unwrap();
            (
                mic.node_id,
                KnownAuthor {
                    facts: AuthorFacts {
                        node_id: mic.node_id,
                        role: mic.role,
                        tenant: mic.tenant,
                        site: mic.site,
                    },
                    public_key: mic.public_key,
                },
            )
        })
        .collect()
}

/// How a sync session the attacker ran ended.
struct SessionEnd {
    /// The answer that refused the session, if one did.
    refused: Option<Value>,
    /// Whether a packet the attacker sent carried the envelope of the target change.
    carried: bool,
    /// Round trips made.
    rounds: usize,
}

/// Runs an automerge sync session for the fleet document with `link`'s node as the side that
/// starts it, the way a node does (`Replication::sync_with`): `doc` holds the change `target`,
/// `envelopes` serves the envelope sent for each change and `mics` the MIC sent with it.
async fn sync_session(
    link: &PeerLink,
    doc: &mut ConfigDoc,
    envelopes: &MemoryEnvelopes,
    mics: &BTreeMap<ChangeHash, Vec<u8>>,
    target: ChangeHash,
) -> SessionEnd {
    let mut state = PeerSync::new();
    let mut end = SessionEnd {
        refused: None,
        carried: false,
        rounds: 0,
    };
    for round in 0..8 {
        let packet = doc
            .generate_sync_message(&mut state, envelopes, &SyncLimits::default())
            .unwrap();
        if packet.is_none() && round > 0 {
            break;
        }
        let mut sent_mics: Vec<String> = Vec::new();
        if let Some(p) = &packet {
            // automerge's own message carries no change chunks: only the envelopes do.
            assert!(
                automerge::sync::Message::decode(&p.message)
                    .unwrap()
                    .changes
                    .is_empty()
            );
            end.carried |= p.changes.iter().any(|c| c.change_hash == target);
            for c in &p.changes {
                let mic = STANDARD.encode(&mics[&c.change_hash]);
                if !sent_mics.contains(&mic) {
                    sent_mics.push(mic);
                }
            }
        }
        let answer = link
            .request(&json!({
                "type": "config_sync",
                "doc_id": "fleet",
                "start": round == 0,
                "message": {
                    "packet": packet.map(|p| STANDARD.encode(p.encode())),
                    "mics": sent_mics,
                },
            }))
            .await;
        end.rounds += 1;
        if answer["type"] == "refused" {
            end.refused = Some(answer);
            break;
        }
        assert_eq!(answer["type"], "config_sync", "{answer}");
        let theirs = &answer["message"];
        match theirs["packet"].as_str() {
            Some(p) => {
                let packet = SyncPacket::decode(&STANDARD.decode(p).unwrap(), 1000).unwrap();
                doc.receive_sync_message(&mut state, &packet, &directory_of(&theirs["mics"]))
                    .unwrap();
            }
            None if round > 0 => break,
            None => {}
        }
    }
    end
}

/// One automerge change on top of `base` that deletes `tenants.default` and writes fleet policy
/// `id`, under any `actor` the caller likes: automerge itself checks no rights, so this is what
/// any node can produce without going through `nexus-crdt`'s local-write checks.
fn raw_change(base: &ConfigDoc, actor: &NodeId, id: &str, at_ms: i64) -> Vec<u8> {
    let mut doc = base.automerge().clone();
    let mut actor = actor.as_bytes().to_vec();
    actor.extend_from_slice(&TEST_INCARNATION.to_be_bytes());
    doc.set_actor(ActorId::from(actor));
    let mut tx = doc.transaction();
    let map = |tx: &automerge::transaction::Transaction<'_>, key: &str| match tx.get(ROOT, key) {
        Ok(Some((AmValue::Object(ObjType::Map), obj))) => obj,
        other => panic!("the fleet document has no {key} map: {other:?}"),
    };
    let tenants = map(&tx, "tenants");
    tx.delete(&tenants, "default").unwrap();
    let policies = map(&tx, "policies");
    autosurgeon::reconcile_prop(&mut tx, &policies, id, policy(id)).unwrap();
    let (hash, _) = tx.commit_with(CommitOptions::default().with_time(at_ms / 1000));
    doc.get_change_by_hash(&hash.expect("the change is not empty"))
        .unwrap()
        .bytes()
        .into_owned()
}

/// A change the model layer makes for `author` (whatever facts it claims) that deletes the
/// tenant record and adds fleet policy `id`.
fn model_change(base: &Replica, author: &LocalAuthor, id: &str) -> SignedChange {
    base.doc()
        .apply_local::<FleetDoc, Infallible>(author, &fleet_admin("user:attacker"), now_ms(), |m| {
            m.tenants.remove("default");
            m.policies.insert(id.to_string(), policy(id));
            Ok(())
        })
        .unwrap()
        .expect("the edit changes the document")
}

/// One forged envelope, the MIC sent as its author's, and the refusal each receiver must log.
struct Forgery {
    what: &'static str,
    change: SignedChange,
    author_mic: Vec<u8>,
    reason: &'static str,
}

/// The fleet document's single state as `api` sees it in gossip: (version, digest, nodes).
async fn fleet_state(fleet: &Fleet, api: &str) -> Option<(u64, String, u64)> {
    let (_, status) = fleet.get(api, "/v1/config/status").await.ok()?;
    let doc = status["documents"]
        .as_array()?
        .iter()
        .find(|d| d["document"] == "fleet")?
        .clone();
    if doc["converged"] != true {
        return None;
    }
    let state = &doc["states"][0];
    Some((
        state["version"].as_u64()?,
        state["heads_digest"].as_str()?.to_string(),
        state["nodes"].as_u64()?,
    ))
}

/// Route ids and version `GET /v1/routes` serves on `api`.
async fn routes(fleet: &Fleet, api: &str) -> (Vec<String>, u64) {
    let (status, body) = fleet.get(api, "/v1/routes?limit=1000").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<String> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    (ids, body["config_version"].as_u64().unwrap())
}

/// A node's SQLite file, read-only (the node keeps writing it).
fn open_db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        dir.join("nexus.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

/// The documents (`doc_id` per row) a node's SQLite file stores the change `hash` under.
fn stored_under(dir: &Path, hash: &str) -> Vec<String> {
    let db = open_db(dir);
    let mut query = db
        .prepare("SELECT doc_id FROM config_changes WHERE hash = ?1")
        .unwrap();
    query
        .query_map([hash], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

async fn refused_count(fleet: &Fleet, node: &NodeProc) -> f64 {
    fleet
        .metric(&node.api, "nexus_config_changes_refused_total", "")
        .await
        .unwrap()
}

async fn refused_sessions(fleet: &Fleet, node: &NodeProc) -> f64 {
    fleet
        .metric(
            &node.api,
            "nexus_config_sync_sessions_total",
            "outcome=\"refused\"",
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_plain_node_cannot_change_fleet_policy_by_forging_or_relaying() {
    let mut fleet = Fleet::init().await.unwrap();
    for _ in 0..2 {
        let token = fleet.token(json!({})).await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string();
        fleet.join(&token, &[]).await.unwrap();
    }
    fleet.converge(3, "online", &[]).await.unwrap();
    wait_until(
        Duration::from_secs(20),
        "every node holds the fleet document",
        || async { fleet.config_converged("fleet", 3).await },
    )
    .await
    .unwrap();
    let (anchor, attacker, victim) = (&fleet.nodes[0], &fleet.nodes[1], &fleet.nodes[2]);
    let me = Identity::load(&attacker.dir);
    let anchor_keys = Identity::load(&anchor.dir);
    assert_eq!(me.mic.role, Role::Node);
    assert_eq!(anchor_keys.mic.role, Role::Anchor);

    // A route so "routes unchanged" compares something, and the state every check compares to.
    let (status, body) = fleet
        .post_json(&victim.api, "/v1/routes", &route("before"))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    for node in &fleet.nodes {
        wait_until(
            Duration::from_secs(15),
            "the first route everywhere",
            || async { routes(&fleet, &node.api).await.0 == ["before"] },
        )
        .await
        .unwrap();
    }
    let baseline_fleet = fleet_state(&fleet, &anchor.api).await.unwrap();
    assert_eq!(baseline_fleet.2, 3);
    let baseline_routes = routes(&fleet, &anchor.api).await;

    let to_victim = PeerLink::open(&me, victim).await;
    let to_anchor = PeerLink::open(&me, anchor).await;
    let replica = Replica::read(&attacker.dir);
    let base = replica.doc();
    // The attacker's copy is the fleet document every node reports, with every change's
    // envelope, each valid under the MIC stored with it.
    assert_eq!(hex::encode(base.heads_digest()), baseline_fleet.1);
    assert!(!replica.envelopes.is_empty());
    for (change, mic) in &replica.envelopes {
        assert!(base.has_change(&change.change_hash));
        let mic = nexus_ca::read_mic(mic).unwrap();
        assert!(change.verify(&mic.public_key).is_ok());
    }
    assert!(
        base.entry(nexus_crdt::TENANTS, "default")
            .unwrap()
            .is_some(),
        "the anchor registered the tenant the forgeries try to delete"
    );
    let at = now_ms();

    // A genuine fleet change by the anchor that the attacker holds before its peers do (in a
    // real fleet: the anchor pushed it to the attacker first). The test plays the anchor with
    // its key only to make this envelope; every forgery below is made with the attacker's key.
    let genuine = {
        let author = LocalAuthor::new(
            anchor_keys.key.clone(),
            anchor_keys.facts(),
            &anchor_keys.mic.serial_hex,
            TEST_INCARNATION,
        )
        .unwrap();
        replica
            .doc()
            .apply_local_entry(
                &author,
                &fleet_admin("user:admin"),
                at,
                nexus_crdt::POLICIES,
                "relayed",
                |v| {
                    *v = Some(policy("relayed"));
                    Ok::<_, Infallible>(())
                },
            )
            .unwrap()
            .unwrap()
    };
    assert!(genuine.verify(&anchor_keys.mic.public_key).is_ok());

    let mut forgeries = Vec::new();

    // 1. Its own MIC, with the model layer told the attacker is an anchor. `apply_local` only
    //    checks the facts its author claims; receivers must take the facts from the MIC.
    {
        let mut claimed = me.facts();
        claimed.role = Role::Anchor;
        let author = LocalAuthor::new(
            me.key.clone(),
            claimed,
            &me.mic.serial_hex,
            TEST_INCARNATION,
        )
        .unwrap();
        let change = model_change(&replica, &author, "claims-anchor");
        // Well formed and signed: only the author's rights are missing.
        assert!(change.verify(&me.key.public_key()).is_ok());
        assert!(
            nexus_crdt::authorize(&DocId::Fleet, &me.facts(), &CallerRole::FleetAdmin).is_err()
        );
        forgeries.push(Forgery {
            what: "own MIC, claims anchor rights",
            change,
            author_mic: me.mic_der.clone(),
            reason: "is not an anchor",
        });
    }

    // 2. A MIC it made itself: its own key, role anchor, this fleet's id, issued by a root and
    //    an anchor CA it generated. Everything but the chain to the fleet's real root.
    {
        let rogue_root = CertificateAuthority::new_fleet_root(&attacker.fleet_id).unwrap();
        let rogue_ca = rogue_root
            .new_intermediate(&attacker.fleet_id, me.mic.node_id)
            .unwrap();
        let rogue_mic = rogue_ca
            .issue_mic(
                &me.key.public_key(),
                &MicProfile {
                    fleet_id: attacker.fleet_id.clone(),
                    node_id: me.mic.node_id,
                    tenant: me.mic.tenant.clone(),
                    site: me.mic.site.clone(),
                    role: Role::Anchor,
                    validity: Duration::from_secs(3600),
                },
            )
            .unwrap();
        let rogue = nexus_ca::read_mic(&rogue_mic).unwrap();
        assert_eq!((rogue.role, rogue.node_id), (Role::Anchor, me.mic.node_id));
        assert!(me.trust().verify_mic(&rogue_mic, at / 1000).is_err());
        let mut claimed = me.facts();
        claimed.role = Role::Anchor;
        let author =
            LocalAuthor::new(me.key.clone(), claimed, &rogue.serial_hex, TEST_INCARNATION).unwrap();
        let change = model_change(&replica, &author, "rogue-mic");
        assert!(change.verify(&me.key.public_key()).is_ok());
        forgeries.push(Forgery {
            what: "self-issued anchor MIC",
            change,
            author_mic: rogue_mic,
            reason: "unknown author",
        });
    }

    // 3. Names the anchor as author (actor, node id, MIC serial, the anchor's real MIC) and
    //    signs with its own key: the signature is the only thing wrong.
    {
        let bytes = raw_change(&base, &anchor_keys.mic.node_id, "signed-as-anchor", at);
        let mut change = SignedChange {
            doc_id: DocId::Fleet,
            author: anchor_keys.mic.node_id,
            caller: fleet_admin("user:attacker"),
            mic_serial: anchor_keys.mic.serial_hex.clone(),
            timestamp_ms: at,
            change_hash: automerge::Change::try_from(&bytes[..]).unwrap().hash(),
            change: bytes,
            signature: [0; 64],
        };
        change.signature = me.key.sign(&change.signed_bytes());
        assert!(matches!(
            change.verify(&anchor_keys.mic.public_key),
            Err(ChangeError::BadSignature { .. })
        ));
        forgeries.push(Forgery {
            what: "anchor as author, attacker's signature",
            change,
            author_mic: anchor_keys.mic_der.clone(),
            reason: "does not verify",
        });
    }

    // 4. Its own change under the anchor's (genuine, public) MIC and serial, so a receiver that
    //    took the role from whatever MIC came along would see an anchor.
    {
        let bytes = raw_change(&base, &me.mic.node_id, "borrowed-mic", at);
        let change = SignedChange::sign(
            DocId::Fleet,
            bytes,
            &me.key,
            fleet_admin("user:attacker"),
            &anchor_keys.mic.serial_hex,
            at,
        )
        .unwrap();
        assert!(change.verify(&me.key.public_key()).is_ok());
        forgeries.push(Forgery {
            what: "attacker's change under the anchor's MIC",
            change,
            author_mic: anchor_keys.mic_der.clone(),
            reason: "unknown author",
        });
    }

    // 5. Relays the anchor's genuine envelope with one byte of the change altered.
    {
        let mut change = genuine.clone();
        let middle = change.change.len() / 2;
        change.change[middle] ^= 0x01;
        assert!(change.verify(&anchor_keys.mic.public_key).is_err());
        forgeries.push(Forgery {
            what: "genuine anchor envelope, altered in transit",
            change,
            author_mic: anchor_keys.mic_der.clone(),
            reason: "does not verify",
        });
    }

    // 6. Re-signs the anchor's genuine change bytes as their author, under its own MIC.
    {
        let change = SignedChange::sign(
            DocId::Fleet,
            genuine.change.clone(),
            &me.key,
            fleet_admin("user:attacker"),
            &me.mic.serial_hex,
            at,
        )
        .unwrap();
        assert!(matches!(
            change.verify(&me.key.public_key()),
            Err(ChangeError::ForeignActor { .. })
        ));
        forgeries.push(Forgery {
            what: "anchor's change bytes re-signed by the attacker",
            change,
            author_mic: me.mic_der.clone(),
            reason: "does not start with the author's node id",
        });
    }

    // Every forgery to both receivers: answered "nothing new", counted, and refused for the
    // reason its defect gives. The node answers after `receive` ran, so the counter is up by
    // then; a healthy fleet refuses nothing else, so it rises by exactly one per forgery.
    for (receiver, link) in [(victim, &to_victim), (anchor, &to_anchor)] {
        for forgery in &forgeries {
            let refused = refused_count(&fleet, receiver).await;
            let reasons = receiver.log().matches(forgery.reason).count();
            let answer = link
                .request(&push_request(&forgery.change, &forgery.author_mic))
                .await;
            assert_eq!(
                answer,
                json!({"type": "installed", "new": 0}),
                "{}: {} accepted it",
                forgery.what,
                receiver.node_id
            );
            assert_eq!(
                refused_count(&fleet, receiver).await,
                refused + 1.0,
                "{}: {} did not count the refusal",
                forgery.what,
                receiver.node_id
            );
            wait_until(
                Duration::from_secs(5),
                "the receiver logs why it refused",
                || async { receiver.log().matches(forgery.reason).count() > reasons },
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", forgery.what, receiver.log()));
        }
    }

    // Every forgery again, now carried by an automerge sync session (anti-entropy) instead of
    // a push: the attacker starts a session for the fleet document from a copy holding the
    // forged change, as a node's initiator does, and its envelope store serves the forged
    // envelope (for 5 and 6, under the genuine change's hash). automerge's messages carry no
    // change chunks, so the envelope is what the receiver must check; it refuses the packet
    // and the session, for the same reason as the push.
    for (receiver, link) in [(victim, &to_victim), (anchor, &to_anchor)] {
        for forgery in &forgeries {
            let target = forgery.change.change_hash;
            let held = if target == genuine.change_hash {
                &genuine.change
            } else {
                &forgery.change.change
            };
            let mut doc = replica.doc();
            doc.load_incremental(held).unwrap();
            assert!(doc.has_change(&target), "{}", forgery.what);
            let mut envelopes = MemoryEnvelopes::new();
            let mut mics = BTreeMap::new();
            for (change, mic) in &replica.envelopes {
                envelopes.insert(change.clone());
                mics.insert(change.change_hash, mic.clone());
            }
            envelopes.insert(forgery.change.clone());
            mics.insert(target, forgery.author_mic.clone());

            let sessions = refused_sessions(&fleet, receiver).await;
            let end = sync_session(link, &mut doc, &envelopes, &mics, target).await;
            assert!(
                end.carried,
                "{}: the session with {} ended after {} round(s) without sending the forged envelope",
                forgery.what, receiver.node_id, end.rounds
            );
            let answer = end.refused.unwrap_or_else(|| {
                panic!(
                    "{}: {} ran the whole session and refused nothing",
                    forgery.what, receiver.node_id
                )
            });
            assert_eq!(answer["code"], "sync_refused", "{answer}");
            let message = answer["message"].as_str().unwrap();
            assert!(
                message.contains("nothing applied") && message.contains(forgery.reason),
                "{}: {} refused for another reason: {message}",
                forgery.what,
                receiver.node_id
            );
            assert_eq!(
                refused_sessions(&fleet, receiver).await,
                sessions + 1.0,
                "{}: {} did not count the refused session",
                forgery.what,
                receiver.node_id
            );
            assert_eq!(
                fleet_state(&fleet, &receiver.api).await,
                Some(baseline_fleet.clone()),
                "{}: the fleet document changed on {} after the session",
                forgery.what,
                receiver.node_id
            );
        }
    }

    // 7. A fleet-document change (built on the fleet document's heads, writing its tenants and
    //    policies) filed under the attacker's own tenant document, which it may write. The
    //    document id is signed, so the envelope cannot be re-labelled later, and the tenant
    //    document does not hold the fleet changes it depends on: each receiver holds it in
    //    memory as a push whose dependencies have not arrived (bounded in number and for 60 s,
    //    then refused), applies none of it and stores it nowhere (checked below), rather than
    //    holding it in automerge's queue for ever.
    let confused = SignedChange::sign(
        DocId::tenant(&me.mic.tenant).unwrap(),
        raw_change(&base, &me.mic.node_id, "filed-under-tenant", at),
        &me.key,
        fleet_admin("user:attacker"),
        &me.mic.serial_hex,
        at,
    )
    .unwrap();
    assert!(confused.verify(&me.key.public_key()).is_ok());
    // The author and caller may write the tenant document: only the dependencies are wrong.
    assert!(
        nexus_crdt::authorize(
            &DocId::tenant(&me.mic.tenant).unwrap(),
            &me.facts(),
            &CallerRole::FleetAdmin
        )
        .is_ok()
    );
    for (receiver, link) in [(victim, &to_victim), (anchor, &to_anchor)] {
        let held = fleet
            .metric(&receiver.api, "nexus_config_changes_pending_total", "")
            .await
            .unwrap();
        let answer = link.request(&push_request(&confused, &me.mic_der)).await;
        assert_eq!(
            answer,
            json!({"type": "installed", "new": 0}),
            "{} took a change whose dependencies it lacks",
            receiver.node_id
        );
        assert_eq!(
            fleet
                .metric(&receiver.api, "nexus_config_changes_pending_total", "")
                .await
                .unwrap(),
            held + 1.0,
            "{} did not hold the change as waiting for its dependencies",
            receiver.node_id
        );
    }

    // Nothing reached the fleet document, stored or relayed: anti-entropy runs every second,
    // so after a few rounds a change held anywhere would show in every node's view of it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for node in &fleet.nodes {
        assert_eq!(
            fleet_state(&fleet, &node.api).await,
            Some(baseline_fleet.clone()),
            "the fleet document changed as {} sees it",
            node.node_id
        );
        assert_eq!(routes(&fleet, &node.api).await, baseline_routes);
        for forgery in &forgeries {
            let hash = hex::encode(forgery.change.change_hash.0);
            assert!(
                stored_under(&node.dir, &hash).is_empty(),
                "{}: stored by {}",
                forgery.what,
                node.node_id
            );
        }
        assert_eq!(
            stored_under(&node.dir, &hex::encode(confused.change_hash.0)),
            Vec::<String>::new(),
            "the change filed under the tenant document is stored on {}",
            node.node_id
        );
    }

    // Positive control: the unaltered anchor envelope, relayed by the attacker on the same
    // connection, is accepted and spreads to every node, so the checks above can fail.
    let answer = to_victim
        .request(&push_request(&genuine, &anchor_keys.mic_der))
        .await;
    assert_eq!(answer, json!({"type": "installed", "new": 1}));
    let genuine_hash = hex::encode(genuine.change_hash.0);
    wait_until(
        Duration::from_secs(20),
        "the relayed anchor change reaches every node",
        || async {
            fleet
                .nodes
                .iter()
                .all(|n| stored_under(&n.dir, &genuine_hash) == ["fleet"])
        },
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(20),
        "every node reports the new fleet document",
        || async {
            fleet_state(&fleet, &anchor.api)
                .await
                .is_some_and(|(v, d, n)| {
                    v == baseline_fleet.0 + 1 && d != baseline_fleet.1 && n == 3
                })
        },
    )
    .await
    .unwrap();
    to_victim.close();
    to_anchor.close();

    // Positive control: a fleet admin's write through a plain node's API still replicates.
    let (status, body) = fleet
        .post_json(&attacker.api, "/v1/routes", &route("after"))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    for node in &fleet.nodes {
        wait_until(
            Duration::from_secs(15),
            "the admin's route everywhere",
            || async { routes(&fleet, &node.api).await.0 == ["after", "before"] },
        )
        .await
        .unwrap();
    }
}
