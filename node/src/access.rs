//! Who may call this node's API: API keys and OIDC issuers from the replicated configuration,
//! plus the bootstrap admin keys stored at enrollment; tenants' API quotas.
//!
//! Keys live in the documents that replicate to where they are used: fleet-admin keys in the
//! fleet document (every node), a tenant's keys and OIDC provider in its tenant document (its
//! nodes and the anchors). Only SHA-256 hashes of key secrets are stored; secrets are 256
//! random bits, so a plain hash is enough (no password stretching needed).
//!
//! The lookup index is rebuilt when the configuration changes (the persister's change counter
//! moved), never on the request path otherwise. OIDC signing keys (JWKS) are fetched from the
//! provider's `jwks_uri` and cached for [`JWKS_TTL`]; a token naming an unknown key id refetches
//! at most every [`JWKS_REFETCH`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nexus_api::ApiError;
use nexus_api::wire::{ApiKey, Caller, CreateKey, CreatedKey};
use nexus_crdt::{ApiKeyRecord, DocId, OidcProvider};

use crate::enroll::api_key_hash;
use crate::replication::Replication;
use crate::{now_ms, rfc3339_ms};

/// How long fetched issuer keys are trusted before they are fetched again.
pub const JWKS_TTL: Duration = Duration::from_secs(300);
/// Least time between two fetches of one JWKS forced by an unknown key id.
pub const JWKS_REFETCH: Duration = Duration::from_secs(10);
/// The provider id under which `PUT /v1/tenants/{id}/oidc` stores a tenant's issuer.
pub const OIDC_DEFAULT: &str = "default";

#[derive(Clone, Debug)]
struct KeyEntry {
    id: String,
    tenant: Option<String>,
    role: String,
    expires_at: Option<i64>,
    revoked: bool,
}

#[derive(Default)]
struct Index {
    keys: HashMap<[u8; 32], KeyEntry>,
    /// Providers by issuer: (tenant, provider).
    issuers: HashMap<String, Vec<(String, OidcProvider)>>,
    quotas: HashMap<String, (u64, u64)>,
}

struct Jwks {
    keys: jsonwebtoken::jwk::JwkSet,
    fetched: Instant,
}

/// The node's authentication state.
pub struct Access {
    replication: Option<Arc<Replication>>,
    changes: Option<tokio::sync::watch::Receiver<u64>>,
    bootstrap: Vec<([u8; 32], String)>,
    index: RwLock<(Option<u64>, Arc<Index>)>,
    jwks: tokio::sync::Mutex<HashMap<String, Jwks>>,
    refetched: Mutex<HashMap<String, Instant>>,
    failed: Mutex<HashMap<String, Instant>>,
    http: reqwest::Client,
}

/// Ids of the fleet-wide keys the configuration records (a record replaces the bootstrap key
/// of the same id: its revocation).
fn fleet_key_ids(
    keys: &[(Option<String>, String, ApiKeyRecord)],
) -> std::collections::HashSet<String> {
    keys.iter()
        .filter(|(t, _, _)| t.is_none())
        .map(|(_, k, _)| k.clone())
        .collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// Largest JWKS document accepted.
const JWKS_MAX_BYTES: usize = 64 * 1024;

/// The client that fetches issuers' keys: public CA roots (Mozilla's, via webpki-roots), no
/// redirects (a JWKS moves by reconfiguring the provider), short timeouts.
fn jwks_client() -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none());
    let builder = match tls {
        Ok(tls) => builder.use_preconfigured_tls(tls),
        Err(_) => builder,
    };
    builder.build().unwrap_or_default()
}

impl Access {
    /// `bootstrap`: (hash, id) of the fleet-admin keys stored at enrollment.
    pub fn new(
        replication: Option<Arc<Replication>>,
        bootstrap: Vec<([u8; 32], String)>,
    ) -> Access {
        // Installing twice (a second node in one process, tests) is harmless.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        Access {
            changes: replication.as_ref().map(|r| r.changes()),
            replication,
            bootstrap,
            index: RwLock::new((None, Arc::default())),
            jwks: tokio::sync::Mutex::new(HashMap::new()),
            refetched: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            http: jwks_client(),
        }
    }

    fn index(&self) -> Arc<Index> {
        let version = self.changes.as_ref().map(|c| *c.borrow());
        {
            let cached = self.index.read().unwrap_or_else(|p| p.into_inner());
            if cached.0.is_some() && cached.0 == version {
                return cached.1.clone();
            }
        }
        let mut index = Index::default();
        let records = match self.replication.as_ref().map(|r| r.access_records()) {
            None => None,
            Some(Ok(records)) => Some(records),
            Some(Err(err)) => {
                // Keep serving the keys known so far rather than refusing everyone.
                tracing::error!(error = ?err, "cannot read API keys from the configuration; keeping the previous ones");
                metrics::counter!("nexus_api_key_index_errors_total").increment(1);
                let cached = self.index.read().unwrap_or_else(|p| p.into_inner());
                if cached.0.is_some() {
                    return cached.1.clone();
                }
                None
            }
        };
        let entry = |tenant: Option<String>, id: String, k: &ApiKeyRecord| KeyEntry {
            id,
            tenant,
            role: k.role.clone(),
            expires_at: k.expires_at,
            revoked: k.revoked_at.is_some(),
        };
        // Precedence for one hash: fleet-document records (anchors write them; a revocation
        // of a bootstrap key lives there), then bootstrap keys, then tenant records — so a
        // tenant's record can never take over a fleet key.
        let (fleet_keys, tenant_keys): (Vec<_>, Vec<_>) = records
            .as_ref()
            .map(|r| r.keys.iter().partition(|(t, _, _)| t.is_none()))
            .unwrap_or_default();
        for (tenant, id, k) in fleet_keys {
            if let Some(hash) = unhex32(&k.key_hash) {
                index
                    .keys
                    .entry(hash)
                    .or_insert_with(|| entry(tenant.clone(), id.clone(), k));
            }
        }
        for (hash, id) in &self.bootstrap {
            index.keys.entry(*hash).or_insert_with(|| KeyEntry {
                id: id.clone(),
                tenant: None,
                role: "fleet-admin".into(),
                expires_at: None,
                revoked: false,
            });
        }
        for (tenant, id, k) in tenant_keys {
            if let Some(hash) = unhex32(&k.key_hash) {
                index
                    .keys
                    .entry(hash)
                    .or_insert_with(|| entry(tenant.clone(), id.clone(), k));
            }
        }
        if let Some(records) = records {
            for (tenant, _, p) in records.oidc {
                index
                    .issuers
                    .entry(p.issuer.clone())
                    .or_default()
                    .push((tenant, p));
            }
            for (tenant, q) in records.quotas {
                if let Some(rate) = q.api_requests_per_second {
                    index
                        .quotas
                        .insert(tenant, (rate, q.api_burst.unwrap_or(rate)));
                }
            }
        }
        let index = Arc::new(index);
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = (version, index.clone());
        index
    }

    /// The caller `secret` stands for.
    pub fn authenticate_key(&self, secret: &str) -> Option<Caller> {
        let index = self.index();
        let entry = index.keys.get(&api_key_hash(secret))?;
        if entry.revoked || entry.expires_at.is_some_and(|e| e <= now_ms() as i64) {
            return None;
        }
        Some(Caller {
            identity: format!("api-key:{}", entry.id),
            role: entry.role.clone(),
            tenant: entry.tenant.clone(),
        })
    }

    /// `(per second, burst)` of `tenant`'s API quota.
    pub fn quota(&self, tenant: &str) -> Option<(u64, u64)> {
        self.index().quotas.get(tenant).copied()
    }

    async fn issuer_keys(
        &self,
        uri: &str,
        kid: Option<&str>,
    ) -> Result<jsonwebtoken::jwk::JwkSet, String> {
        let mut cache = self.jwks.lock().await;
        let fresh = cache
            .get(uri)
            .is_some_and(|j| j.fetched.elapsed() < JWKS_TTL);
        let knows_kid = |set: &jsonwebtoken::jwk::JwkSet| kid.is_none_or(|k| set.find(k).is_some());
        let stale_kid = cache.get(uri).is_some_and(|j| !knows_kid(&j.keys)) && {
            let mut refetched = self.refetched.lock().unwrap_or_else(|p| p.into_inner());
            let due = refetched
                .get(uri)
                .is_none_or(|at| at.elapsed() >= JWKS_REFETCH);
            if due {
                refetched.insert(uri.to_string(), Instant::now());
            }
            due
        };
        if !fresh || stale_kid {
            // A failed fetch is not retried for JWKS_REFETCH: a stream of tokens naming a
            // dead issuer costs one attempt, not one each.
            {
                let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(at) = failed.get(uri)
                    && at.elapsed() < JWKS_REFETCH
                    && !fresh
                    && cache.get(uri).is_none()
                {
                    return Err(format!(
                        "the issuer's keys at {uri} could not be fetched a moment ago"
                    ));
                }
                failed.remove(uri);
            }
            match self.fetch_jwks(uri).await {
                Ok(keys) => {
                    cache.insert(
                        uri.to_string(),
                        Jwks {
                            keys,
                            fetched: Instant::now(),
                        },
                    );
                }
                Err(err) => {
                    self.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(uri.to_string(), Instant::now());
                    tracing::warn!(jwks_uri = uri, error = %err, "cannot fetch an OIDC issuer's keys");
                    // Keys fetched earlier stay usable until replaced.
                    if cache.get(uri).is_none() {
                        return Err(format!("the issuer's keys could not be fetched from {uri}"));
                    }
                }
            }
        }
        Ok(cache.get(uri).map(|j| j.keys.clone()).unwrap_or_default())
    }

    async fn fetch_jwks(&self, uri: &str) -> Result<jsonwebtoken::jwk::JwkSet, String> {
        let mut response = self.http.get(uri).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > JWKS_MAX_BYTES {
                return Err(format!("the document exceeds {JWKS_MAX_BYTES} bytes"));
            }
        }
        serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))
    }

    /// The caller an OIDC token stands for: signed by a key its issuer publishes, for the
    /// provider's audience, unexpired, with a tenant role.
    pub async fn authenticate_jwt(&self, token: &str) -> Result<Caller, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        let payload = token
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
            .ok_or("the token's claims are not base64url JSON")?;
        let issuer = payload["iss"]
            .as_str()
            .ok_or("the token names no issuer (iss)")?;
        let index = self.index();
        let providers = index.issuers.get(issuer).ok_or_else(|| {
            format!(
                "issuer {issuer:?} is not configured for any tenant here (PUT \
                 /v1/tenants/<id>/oidc)"
            )
        })?;
        let mut last = String::new();
        let mut accepted: Vec<Caller> = Vec::new();
        for (tenant, provider) in providers {
            match self
                .verify_for(token, &header, issuer, tenant, provider)
                .await
            {
                Ok(caller) => accepted.push(caller),
                Err(why) => last = why,
            }
        }
        match accepted.len() {
            0 => Err(last),
            1 => Ok(accepted.remove(0)),
            // Refused on PUT; two anchors accepting concurrent PUTs can still get here.
            _ => Err(format!(
                "issuer {issuer:?} is configured for more than one tenant: a fleet admin must \
                 remove all but one (GET /v1/tenants/<id>/oidc)"
            )),
        }
    }

    async fn verify_for(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        issuer: &str,
        tenant: &str,
        provider: &OidcProvider,
    ) -> Result<Caller, String> {
        let keys = self
            .issuer_keys(&provider.jwks_uri, header.kid.as_deref())
            .await?;
        let jwk = match &header.kid {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| {
            format!(
                "the issuer publishes no key {:?} at {} (tokens must name their key in kid \
                 unless the issuer has exactly one)",
                header.kid, provider.jwks_uri
            )
        })?;
        // The key decides the algorithm, not the token.
        if let Some(alg) = &jwk.common.key_algorithm
            && format!("{alg:?}") != format!("{:?}", header.alg)
        {
            return Err(format!(
                "the token is signed with {:?} but key {:?} is for {alg:?}",
                header.alg, header.kid
            ));
        }
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("the issuer's key is unusable: {e}"))?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_audience(&[&provider.audience]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| format!("the token does not verify: {e}"))?
            .claims;
        let role = provider
            .role_claim
            .as_ref()
            .and_then(|c| claims[c.as_str()].as_str().map(str::to_string))
            .or_else(|| provider.default_role.clone())
            .ok_or("the token carries no role claim and the provider sets no default_role")?;
        if !nexus_crdt::TENANT_ROLES.contains(&role.as_str()) {
            return Err(format!(
                "the token's role {role:?} is not one of {:?}",
                nexus_crdt::TENANT_ROLES
            ));
        }
        let subject = claims["sub"].as_str().unwrap_or_default();
        // Bounded: identities are recorded in audit entries and changes.
        let identity: String = format!("user:{issuer}#{subject}")
            .chars()
            .take(256)
            .collect();
        Ok(Caller {
            identity,
            role,
            tenant: Some(tenant.to_string()),
        })
    }

    fn replication(&self) -> Result<&Arc<Replication>, ApiError> {
        self.replication
            .as_ref()
            .ok_or_else(|| ApiError::internal("the replicated configuration is not loaded"))
    }

    /// A key as the API shows it (never its hash).
    pub(crate) fn wire_key(tenant: Option<String>, id: String, k: ApiKeyRecord) -> ApiKey {
        ApiKey {
            id,
            name: k.name,
            role: k.role,
            tenant,
            created_at: rfc3339_ms(k.created_at.max(0) as u64),
            created_by: k.created_by,
            expires_at: k.expires_at.map(|t| rfc3339_ms(t.max(0) as u64)),
            revoked_at: k.revoked_at.map(|t| rfc3339_ms(t.max(0) as u64)),
        }
    }

    /// Keys this node knows (fleet-wide and of the tenants it holds), or one tenant's; by id.
    pub fn keys(&self, tenant: Option<String>) -> Result<Vec<ApiKey>, ApiError> {
        let records = self
            .replication()?
            .access_records()
            .map_err(crate::backend::write_error)?;
        let recorded = fleet_key_ids(&records.keys);
        let mut keys: Vec<ApiKey> = records
            .keys
            .into_iter()
            .chain(self.bootstrap_records(&recorded))
            .filter(|(t, _, _)| tenant.is_none() || *t == tenant)
            .map(|(t, id, k)| Access::wire_key(t, id, k))
            .collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(keys)
    }

    /// The bootstrap keys no fleet-document record replaces, as records (fleet-wide).
    fn bootstrap_records(
        &self,
        recorded: &std::collections::HashSet<String>,
    ) -> Vec<(Option<String>, String, ApiKeyRecord)> {
        self.bootstrap
            .iter()
            .filter(|(_, id)| !recorded.contains(id))
            .map(|(hash, id)| {
                (
                    None,
                    id.clone(),
                    ApiKeyRecord {
                        name: "bootstrap admin key (admin.key of nexus init)".into(),
                        role: "fleet-admin".into(),
                        key_hash: hex::encode(hash),
                        created_by: "nexus init".into(),
                        created_at: 0,
                        expires_at: None,
                        revoked_at: None,
                    },
                )
            })
            .collect()
    }

    /// Creates a key; the secret is returned once and only its hash is stored.
    pub async fn create_key(
        &self,
        caller: &nexus_crdt::Caller,
        request: CreateKey,
    ) -> Result<CreatedKey, ApiError> {
        let replication = self.replication()?;
        let expires_at = match &request.ttl {
            None => None,
            Some(ttl) => Some(now_ms() as i64 + key_ttl(ttl)?.as_millis() as i64),
        };
        let id = hex::encode(rand::random::<[u8; 8]>());
        let secret = format!("nxk_{}", URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()));
        let record = ApiKeyRecord {
            name: request.name.trim().to_string(),
            role: request.role.clone(),
            key_hash: hex::encode(api_key_hash(&secret)),
            created_by: caller.identity.chars().take(nexus_crdt::NAME_MAX).collect(),
            created_at: now_ms() as i64,
            expires_at,
            revoked_at: None,
        };
        let (doc, collection) = match &request.tenant {
            None => (DocId::Fleet, nexus_crdt::FLEET_API_KEYS),
            Some(t) => (
                DocId::tenant(t).map_err(|e| ApiError::bad_request(format!("tenant: {e}")))?,
                nexus_crdt::TENANT_API_KEYS,
            ),
        };
        self.require_tenant(&request.tenant)?;
        replication
            .put_record(caller, &doc, collection, &id, Some(record.clone()))
            .await
            .map_err(crate::backend::write_error)?;
        Ok(CreatedKey {
            key: Access::wire_key(request.tenant, id, record),
            secret,
        })
    }

    fn require_tenant(&self, tenant: &Option<String>) -> Result<(), ApiError> {
        let Some(t) = tenant else {
            return Ok(());
        };
        let records = self
            .replication()?
            .access_records()
            .map_err(crate::backend::write_error)?;
        if records.quotas.contains_key(t) || self.tenant_exists(t) {
            Ok(())
        } else {
            Err(ApiError::not_found(format!(
                "no tenant {t:?}: create it first (POST /v1/tenants)"
            )))
        }
    }

    fn tenant_exists(&self, tenant: &str) -> bool {
        self.replication
            .as_ref()
            .and_then(|r| r.get(&crate::replication::Kind::Tenant, None, tenant).ok())
            .is_some()
    }

    /// Revokes key `id` (of `tenant`, when the caller is confined to one).
    pub async fn revoke_key(
        &self,
        caller: &nexus_crdt::Caller,
        tenant: Option<String>,
        id: &str,
    ) -> Result<ApiKey, ApiError> {
        let replication = self.replication()?;
        let records = replication
            .access_records()
            .map_err(crate::backend::write_error)?;
        let recorded = fleet_key_ids(&records.keys);
        let bootstrap = self.bootstrap_records(&recorded);
        let Some((key_tenant, _, mut record)) = records
            .keys
            .into_iter()
            .chain(bootstrap)
            .find(|(t, k, _)| k == id && (tenant.is_none() || *t == tenant))
        else {
            return Err(ApiError::not_found(format!(
                "no API key {id:?} visible here"
            )));
        };
        if record.revoked_at.is_none() {
            record.revoked_at = Some(now_ms() as i64);
            if record.created_at == 0 {
                // A bootstrap key gets its record (in the fleet document) as it is revoked.
                record.created_at = now_ms() as i64;
            }
            let (doc, collection) = match &key_tenant {
                None => (DocId::Fleet, nexus_crdt::FLEET_API_KEYS),
                Some(t) => (
                    DocId::tenant(t).map_err(|e| ApiError::internal(e.to_string()))?,
                    nexus_crdt::TENANT_API_KEYS,
                ),
            };
            replication
                .put_record(caller, &doc, collection, id, Some(record.clone()))
                .await
                .map_err(crate::backend::write_error)?;
        }
        Ok(Access::wire_key(key_tenant, id.to_string(), record))
    }

    /// A tenant's OIDC provider.
    pub fn oidc(&self, tenant: &str) -> Result<Option<serde_json::Value>, ApiError> {
        self.require_tenant(&Some(tenant.to_string()))?;
        let records = self
            .replication()?
            .access_records()
            .map_err(crate::backend::write_error)?;
        Ok(records
            .oidc
            .into_iter()
            .find(|(t, id, _)| t == tenant && id == OIDC_DEFAULT)
            .and_then(|(_, _, p)| serde_json::to_value(p).ok()))
    }

    /// Sets or removes a tenant's OIDC provider.
    /// Checks an OIDC provider body for `tenant` as [`put_oidc`](Self::put_oidc) would.
    pub fn check_oidc(
        &self,
        tenant: &str,
        body: serde_json::Value,
    ) -> Result<OidcProvider, ApiError> {
        let p: OidcProvider = serde_json::from_value(body).map_err(|e| {
            ApiError::bad_request(format!(
                "invalid OIDC provider body: {e} (fields: issuer, audience, jwks_uri, \
                 role_claim, default_role)"
            ))
        })?;
        let records = self
            .replication()?
            .access_records()
            .map_err(crate::backend::write_error)?;
        if records
            .oidc
            .iter()
            .any(|(t, _, other)| t != tenant && other.issuer == p.issuer)
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "issuer_taken",
                format!(
                    "issuer {:?} is already configured for another tenant; an issuer's \
                     users sign in to one tenant (give each tenant its own issuer or \
                     client)",
                    p.issuer
                ),
            ));
        }
        let problems = nexus_crdt::validate::oidc_problems(OIDC_DEFAULT, &p);
        if !problems.is_empty() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                problems.join("; "),
            ));
        }
        Ok(p)
    }

    pub async fn put_oidc(
        &self,
        caller: &nexus_crdt::Caller,
        tenant: &str,
        provider: Option<serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, ApiError> {
        self.require_tenant(&Some(tenant.to_string()))?;
        let doc =
            DocId::tenant(tenant).map_err(|e| ApiError::bad_request(format!("tenant: {e}")))?;
        let value = match provider {
            None => None,
            Some(body) => Some(self.check_oidc(tenant, body)?),
        };
        let replication = self.replication()?;
        replication
            .put_record(
                caller,
                &doc,
                nexus_crdt::OIDC_PROVIDERS,
                OIDC_DEFAULT,
                value.clone(),
            )
            .await
            .map_err(crate::backend::write_error)?;
        Ok(value.and_then(|p| serde_json::to_value(p).ok()))
    }
}

/// An API key lifetime (`30d`, `12h`): 1 minute to 5 years.
pub fn key_ttl(ttl: &str) -> Result<Duration, ApiError> {
    let d = humantime::parse_duration(ttl).map_err(|e| {
        ApiError::bad_request(format!(
            "ttl must be a duration such as 30d or 12h, got {ttl:?}: {e}"
        ))
    })?;
    if d < Duration::from_secs(60) || d > Duration::from_secs(5 * 365 * 86_400) {
        return Err(ApiError::bad_request(format!(
            "ttl must be between 1 minute and 5 years, got {ttl:?}"
        )));
    }
    Ok(d)
}
