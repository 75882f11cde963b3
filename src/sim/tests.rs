//! HTTP-level tests of the simulator: real requests with reqwest against [`spawn`].
//!
//! Every JSON body that passes through [`Api::call`] is checked for `null`s and for the
//! `application/json` content type, so the "never null" rule is tested everywhere.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;
use crate::metal::types::{DeviceList, DeviceState};

const TOKEN: &str = DEFAULT_TOKEN;

fn project() -> Uuid {
    DEFAULT_PROJECT
}

fn assert_no_null(v: &Value, path: &str) {
    match v {
        Value::Null => panic!("null at {path}"),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| assert_no_null(x, &format!("{path}[{i}]"))),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| assert_no_null(x, &format!("{path}.{k}"))),
        _ => {}
    }
}

struct Resp {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    json: Option<Value>,
}

impl Resp {
    fn errors(&self) -> Vec<String> {
        let v = self.json.as_ref().expect("error body");
        serde_json::from_value(v["errors"].clone()).expect("errors array")
    }

    fn device(&self) -> Device {
        serde_json::from_value(self.json.clone().expect("device body")).unwrap()
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(sim: &SimHandle) -> Self {
        Self {
            http: crate::metal::tls::http_client_builder().build().unwrap(),
            base: sim.base_url(),
            token: Some(TOKEN.into()),
        }
    }

    fn with_token(sim: &SimHandle, token: Option<&str>) -> Self {
        Self {
            token: token.map(str::to_string),
            ..Self::new(sim)
        }
    }

    async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Result<Resp> {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.header("X-Auth-Token", t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.timeout(Duration::from_secs(10)).send().await?;
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.bytes().await?;
        let json = if bytes.is_empty() {
            None
        } else {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert!(
                ct.starts_with("application/json"),
                "{path}: content-type {ct:?}"
            );
            let v: Value = serde_json::from_slice(&bytes).expect("JSON body");
            assert_no_null(&v, path);
            Some(v)
        };
        if matches!(status, StatusCode::NO_CONTENT | StatusCode::ACCEPTED) {
            assert!(json.is_none(), "{path}: {status} must have no body");
        }
        Ok(Resp {
            status,
            headers,
            json,
        })
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.try_call(method, path, body).await.expect("transport")
    }

    async fn create(&self, body: Value) -> Resp {
        self.call(
            Method::POST,
            &format!("/projects/{}/devices", project()),
            Some(body),
        )
        .await
    }

    async fn get(&self, id: Uuid) -> Resp {
        self.call(Method::GET, &format!("/devices/{id}"), None)
            .await
    }

    async fn list(&self, query: &str) -> DeviceList {
        let r = self
            .call(
                Method::GET,
                &format!("/projects/{}/devices?{query}", project()),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        serde_json::from_value(r.json.unwrap()).unwrap()
    }
}

fn body(hostname: &str) -> Value {
    json!({"metro": "sv", "plan": "c3.small.x86", "operating_system": "ubuntu_22_04",
           "hostname": hostname, "tags": ["cluster-a"]})
}

fn input(hostname: &str, tags: &[&str]) -> DeviceCreateInput {
    DeviceCreateInput {
        metro: Some("da".into()),
        plan: "m3.small.x86".into(),
        operating_system: "debian_12".into(),
        hostname: Some(hostname.into()),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

async fn state_of(api: &Api, id: Uuid) -> Option<DeviceState> {
    let r = api.get(id).await;
    match r.status {
        StatusCode::OK => r.device().state,
        StatusCode::NOT_FOUND => None,
        s => panic!("unexpected {s}"),
    }
}

/// Polls until the device is in `want` (or gone, for `None`), within `limit`.
async fn wait_for(api: &Api, id: Uuid, want: Option<DeviceState>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = state_of(api, id).await;
        if s == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {s:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn lifecycle_create_provision_active_delete_gone() {
    let sim = spawn(SimArgs {
        provision_seconds: 0.5,
        deprovision_seconds: 0.3,
        ..SimArgs::for_tests()
    })
    .await
    .unwrap();
    let api = Api::new(&sim);
    let r = api
        .create(json!({"metro": "sv", "plan": "c3.small.x86", "operating_system": "ubuntu_22_04",
            "hostname": "w-1", "description": "worker", "tags": ["a", "b"], "billing_cycle": "hourly",
            "userdata": "#cloud-config\n", "customdata": {"k": "v"}}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let d = r.device();
    let id = d.id.unwrap();
    assert_eq!(d.state, Some(DeviceState::Queued));
    assert_eq!(
        d.href.as_deref(),
        Some(format!("/metal/v1/devices/{id}").as_str())
    );
    assert_eq!(d.short_id.as_deref(), Some(&id.to_string()[..8]));
    assert_eq!(d.hostname.as_deref(), Some("w-1"));
    assert_eq!(d.metro.as_ref().unwrap().code.as_deref(), Some("sv"));
    assert_eq!(d.facility.as_ref().unwrap().code.as_deref(), Some("sv15"));
    assert_eq!(
        d.plan.as_ref().unwrap().slug.as_deref(),
        Some("c3.small.x86")
    );
    assert_eq!(
        d.project_lite.as_ref().unwrap().href,
        format!("/metal/v1/projects/{}", project())
    );
    assert_eq!(d.userdata.as_ref().unwrap().expose(), "#cloud-config\n");
    assert_eq!(d.customdata.as_ref().unwrap().expose(), &json!({"k": "v"}));
    assert_eq!(d.locked, Some(false));
    assert!(
        d.ip_addresses.is_none() && d.root_password.is_none(),
        "only once active"
    );
    let created = r.json.as_ref().unwrap()["created_at"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(humantime::parse_rfc3339(&created).is_ok(), "{created}");

    wait_for(
        &api,
        id,
        Some(DeviceState::Provisioning),
        Duration::from_secs(5),
    )
    .await;
    let p = api.get(id).await.device();
    assert!(p.provisioning_percentage.is_some());
    wait_for(&api, id, Some(DeviceState::Active), Duration::from_secs(5)).await;
    let a = api.get(id).await.device();
    assert!(a.provisioning_percentage.is_none());
    assert!(a.root_password.is_some());
    let ips = a.ip_addresses.unwrap();
    assert!(
        ips.iter()
            .any(|i| i.public == Some(true) && i.address_family == Some(4))
    );
    assert!(ips.iter().any(|i| {
        i.public == Some(false) && i.address.as_deref().is_some_and(|a| a.starts_with("10."))
    }));
    assert!(ips.iter().any(|i| i.address_family == Some(6)));

    let del = api
        .call(
            Method::DELETE,
            &format!("/devices/{id}?force_delete=true"),
            None,
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert_eq!(state_of(&api, id).await, Some(DeviceState::Deprovisioning));
    assert_eq!(sim.devices().len(), 1, "deprovisioning devices still exist");
    let again = api
        .call(Method::DELETE, &format!("/devices/{id}"), None)
        .await;
    assert_eq!(
        again.status,
        StatusCode::NO_CONTENT,
        "delete is idempotent while deprovisioning"
    );
    wait_for(&api, id, None, Duration::from_secs(5)).await;
    assert!(sim.devices().is_empty());
    let stats = sim.stats();
    assert_eq!(
        (
            stats.devices_created,
            stats.devices_deleted,
            stats.devices_live
        ),
        (1, 1, 0)
    );
    assert!(
        stats.requests_of(Operation::CreateDevice) == 1
            && stats.requests_of(Operation::FindDeviceById) >= 3
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn failed_provisioning_with_fail_rate_one() {
    let sim = spawn(SimArgs {
        fail_rate: 1.0,
        ..SimArgs::for_tests()
    })
    .await
    .unwrap();
    let api = Api::new(&sim);
    let id = api.create(body("f")).await.device().id.unwrap();
    assert_eq!(state_of(&api, id).await, Some(DeviceState::Failed));
    assert!(api.get(id).await.device().root_password.is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn serves_at_root_and_under_metal_v1_and_sim_stats() {
    let sim = spawn(SimArgs::for_tests()).await.unwrap();
    let api = Api::new(&sim);
    let id = api.create(body("p")).await.device().id.unwrap();
    let under = api
        .call(Method::GET, &format!("/metal/v1/devices/{id}"), None)
        .await;
    assert_eq!(under.status, StatusCode::OK);
    let created = api
        .call(
            Method::POST,
            &format!("/metal/v1/projects/{}/devices", project()),
            Some(body("q")),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let unknown = api.call(Method::GET, "/nope", None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.json.is_some());
    let stats = Api::with_token(&sim, None)
        .call(Method::GET, "/_sim/stats", None)
        .await;
    assert_eq!(stats.status, StatusCode::OK);
    let s: SimStats = serde_json::from_value(stats.json.unwrap()).unwrap();
    assert_eq!(s.devices_created, 2);
    assert_eq!(s.requests_of(Operation::CreateDevice), 2);
    assert_eq!(s.responses["201"], 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn pagination_2501_devices_in_three_pages_with_exact_meta() {
    let sim = spawn(SimArgs::for_tests()).await.unwrap();
    for i in 0..2501 {
        sim.create_device_direct(project(), input(&format!("n{i}"), &["bulk"]));
    }
    // A device of another project never shows up.
    sim.create_device_direct(Uuid::new_v4(), input("foreign", &["bulk"]));
    let api = Api::new(&sim);
    let base = format!("/projects/{}/devices", project());
    let p1 = api.list("per_page=1000").await;
    let m = p1.meta.clone().unwrap();
    assert_eq!(p1.devices.len(), 1000);
    assert_eq!(
        (m.total, m.current_page, m.last_page),
        (Some(2501), Some(1), Some(3))
    );
    assert!(m.previous.is_none());
    assert_eq!(
        m.first.unwrap().href,
        format!("{base}?page=1&per_page=1000")
    );
    assert_eq!(m.last.unwrap().href, format!("{base}?page=3&per_page=1000"));
    assert_eq!(
        m.self_.unwrap().href,
        format!("{base}?page=1&per_page=1000")
    );
    assert_eq!(
        m.next.as_ref().unwrap().href,
        format!("{base}?page=2&per_page=1000")
    );

    // Follow `next` under the real base path; collect every hostname once.
    let mut seen: Vec<String> = p1
        .devices
        .iter()
        .map(|d| d.hostname.clone().unwrap())
        .collect();
    let mut next = m.next;
    let mut pages = 1;
    while let Some(h) = next {
        let r = api
            .call(Method::GET, &format!("/metal/v1{}", h.href), None)
            .await;
        let page: DeviceList = serde_json::from_value(r.json.unwrap()).unwrap();
        pages += 1;
        let meta = page.meta.unwrap();
        assert_eq!(meta.current_page, Some(pages));
        assert!(meta.previous.is_some());
        seen.extend(page.devices.iter().map(|d| d.hostname.clone().unwrap()));
        next = meta.next;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 2501);
    assert_eq!(seen[0], "n0");
    assert_eq!(seen[2500], "n2500");
    let p3 = api.list("page=3&per_page=1000").await;
    assert_eq!(p3.devices.len(), 501);
    assert!(p3.meta.unwrap().next.is_none());

    // Spec default per_page is 10; beyond the last page is empty but well-formed.
    let d = api.list("").await;
    assert_eq!(d.devices.len(), 10);
    assert_eq!(d.meta.unwrap().last_page, Some(251));
    let past = api.list("page=9&per_page=1000").await;
    assert!(past.devices.is_empty());
    assert!(past.meta.unwrap().next.is_none());
    assert_eq!(sim.devices().len(), 2502);
    sim.shutdown().await;
}

#[tokio::test]
async fn per_page_is_capped_by_the_server() {
    let sim = spawn(SimArgs {
        per_page_max: 100,
        ..SimArgs::for_tests()
    })
    .await
    .unwrap();
    for i in 0..150 {
        sim.create_device_direct(project(), input(&format!("c{i}"), &[]));
    }
    let api = Api::new(&sim);
    let l = api.list("per_page=1000").await;
    assert_eq!(l.devices.len(), 100);
    let m = l.meta.unwrap();
    assert_eq!(m.last_page, Some(2));
    assert!(m.next.unwrap().href.ends_with("?page=2&per_page=100"));
    let bad = api
        .call(
            Method::GET,
            &format!("/projects/{}/devices?page=0", project()),
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    sim.shutdown().await;
}

#[tokio::test]
async fn tag_hostname_and_search_filters() {
    let sim = spawn(SimArgs::for_tests()).await.unwrap();
    sim.create_device_direct(project(), input("alpha-1", &["k8s:c1", "pool:a"]));
    sim.create_device_direct(project(), input("alpha-2", &["k8s:c1"]));
    sim.create_device_direct(project(), input("beta-1", &["k8s:c2"]));
    let api = Api::new(&sim);
    let names = |l: DeviceList| -> Vec<String> {
        l.devices.into_iter().map(|d| d.hostname.unwrap()).collect()
    };
    assert_eq!(
        names(api.list("tag=k8s%3Ac1").await),
        ["alpha-1", "alpha-2"]
    );
    assert_eq!(names(api.list("tag=k8s:c2").await), ["beta-1"]);
    assert!(
        names(api.list("tag=k8s").await).is_empty(),
        "tags match exactly"
    );
    assert_eq!(
        names(api.list("hostname=ALPHA").await),
        ["alpha-1", "alpha-2"]
    );
    assert_eq!(names(api.list("hostname=a-2").await), ["alpha-2"]);
    // Lookups by hostname are counted by the hostname asked for, the others not at all.
    assert_eq!(
        sim.stats().hostname_lookups,
        [("ALPHA".to_owned(), 1), ("a-2".to_owned(), 1)].into()
    );
    assert_eq!(names(api.list("search=pool").await), ["alpha-1"]);
    assert_eq!(
        names(
            api.list("search=m3.small&include=plan&exclude=project")
                .await
        )
        .len(),
        3
    );
    let l = api.list("tag=k8s:c1&per_page=1").await;
    let next = l.meta.unwrap().next.unwrap().href;
    assert!(next.contains("tag=k8s%3Ac1"), "{next}");
    sim.shutdown().await;
}

#[tokio::test]
async fn auth_401_403_404() {
    let other = Uuid::parse_str("5d1ef2a4-0000-4000-8000-000000000002").unwrap();
    let sim = spawn(SimArgs {
        tokens: vec![
            TokenSpec::all("admin"),
            TokenSpec::scoped("mine", [project()]),
        ],
        projects: vec![other],
        ..SimArgs::for_tests()
    })
    .await
    .unwrap();
    let admin = Api::with_token(&sim, Some("admin"));
    let mine = Api::with_token(&sim, Some("mine"));
    let none = Api::with_token(&sim, None);
    let wrong = Api::with_token(&sim, Some("sim-token"));
    let foreign = admin
        .call(
            Method::POST,
            &format!("/projects/{other}/devices"),
            Some(body("x")),
        )
        .await
        .device()
        .id
        .unwrap();
    let own = mine.create(body("y")).await.device().id.unwrap();

    for api in [&none, &wrong] {
        let r = api.get(own).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(!r.errors().is_empty());
        assert_eq!(api.create(body("z")).await.status, StatusCode::UNAUTHORIZED);
    }
    let unknown_project = Uuid::new_v4();
    let r = mine
        .call(
            Method::GET,
            &format!("/projects/{unknown_project}/devices"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = mine
        .call(Method::GET, &format!("/projects/{other}/devices"), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = mine
        .call(
            Method::POST,
            &format!("/projects/{other}/devices"),
            Some(body("w")),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(mine.get(foreign).await.status, StatusCode::FORBIDDEN);
    let r = mine
        .call(Method::DELETE, &format!("/devices/{foreign}"), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = mine
        .call(
            Method::PUT,
            &format!("/devices/{foreign}"),
            Some(json!({"locked": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = mine
        .call(
            Method::POST,
            &format!("/devices/{foreign}/actions"),
            Some(json!({"type": "power_off"})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "403 as the real API, though performAction declares none"
    );
    assert_eq!(mine.get(Uuid::new_v4()).await.status, StatusCode::NOT_FOUND);
    let r = mine.call(Method::GET, "/devices/not-a-uuid", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(admin.get(own).await.status, StatusCode::OK);
    sim.shutdown().await;
}

#[tokio::test]
async fn create_validation_422s_name_the_problem() {
    let sim = spawn(SimArgs::for_tests()).await.unwrap();
    let api = Api::new(&sim);
    let cases = [
        (
            json!({"plan": "c3.small.x86", "operating_system": "ubuntu_22_04"}),
            "metro or facility",
        ),
        (
            json!({"metro": "sv", "facility": ["sv15"], "plan": "c3.small.x86", "operating_system": "ubuntu_22_04"}),
            "Only one of metro or facility",
        ),
        (
            json!({"metro": "sv", "operating_system": "ubuntu_22_04"}),
            "plan is required",
        ),
        (
            json!({"metro": "sv", "plan": "c3.small.x86"}),
            "operating_system is required",
        ),
        (
            json!({"metro": "xx", "plan": "c3.small.x86", "operating_system": "ubuntu_22_04"}),
            "Metro xx",
        ),
        (
            json!({"facility": ["zz9"], "plan": "c3.small.x86", "operating_system": "ubuntu_22_04"}),
            "Facility zz9",
        ),
        (
            json!({"metro": "sv", "plan": "z9.tiny", "operating_system": "ubuntu_22_04"}),
            "Plan z9.tiny",
        ),
        (
            json!({"metro": "sv", "plan": "c3.small.x86", "operating_system": "beos_5"}),
            "beos_5",
        ),
        (
            json!({"metro": "sv", "plan": "c3.small.x86", "operating_system": "custom_ipxe"}),
            "ipxe_script_url",
        ),
        (
            json!({"metro": "sv", "plan": "c3.small.x86", "operating_system": "ubuntu_22_04", "billing_cycle": "weekly"}),
            "billing_cycle",
        ),
        (
            json!({"metro": "sv", "plan": "c3.small.x86", "operating_system": "ubuntu_22_04", "hardware_reservation_id": "nope"}),
            "not provisionable",
        ),
    ];
    for (b, needle) in cases {
        let r = api.create(b.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let errs = r.errors();
        assert!(errs.iter().any(|e| e.contains(needle)), "{b}: {errs:?}");
    }
    // Invalid JSON is a 422 with an errors array too.
    let r = api
        .http
        .post(format!("{}/projects/{}/devices", api.base, project()))
        .header("X-Auth-Token", TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"][0].as_str().unwrap().contains("JSON"));
    // iPXE with a URL, `metro: any` and facility lists are fine.
    let ok = [
        json!({"metro": "sv", "plan": "c3.small.x86", "operating_system": "custom_ipxe", "ipxe_script_url": "http://x/boot.ipxe", "always_pxe": true}),
        json!({"metro": "any", "plan": "c3.small.x86", "operating_system": "flatcar_stable"}),
        json!({"facility": ["ny5", "any"], "plan": "n3.xlarge.x86", "operating_system": "rocky_9"}),
        json!({"facility": "am6", "plan": "s3.xlarge.x86", "operating_system": "ubuntu_24_04", "termination_time": "2030-01-01T00:00:00+01:00"}),
    ];
    for b in ok {
        let r = api.create(b.clone()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{b}: {:?}", r.json);
    }
    let am = sim.devices().pop().unwrap();
    assert_eq!(am.facility.unwrap().code.as_deref(), Some("am6"));
    assert_eq!(am.metro.unwrap().code.as_deref(), Some("am"));
    assert_eq!(am.termination_time.as_deref(), Some("2029-12-31T23:00:00Z"));
    assert_eq!(
        sim.devices().len(),
        4,
        "rejected creates leave nothing behind"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn capacity_exhaustion_and_release() {
    let sim = spawn(SimArgs {
        capacity: vec![
            "sv:c3.small.x86=2".parse().unwrap(),
            "ny:c3.small.x86=0".parse().unwrap(),
        ],
        deprovision_seconds: 0.0,
        ..SimArgs::for_tests()
    })
    .await
    .unwrap();
    let api = Api::new(&sim);
    let a = api.create(body("a")).await.device().id.unwrap();
    assert_eq!(api.create(body("b")).await.status, StatusCode::CREATED);
    let full = api.create(body("c")).await;
    assert_eq!(full.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        full.errors(),
        ["The metro sv has no provisionable c3.small.x86 servers matching your criteria"]
    );
    let other_plan =
        json!({"metro": "sv", "plan": "m3.small.x86", "operating_system": "ubuntu_22_04"});
    assert_eq!(
        api.create(other_plan).await.status,
        StatusCode::CREATED,
        "other plans unlimited"
    );
    let fac =
        json!({"facility": ["ny5"], "plan": "c3.small.x86", "operating_system": "ubuntu_22_04"});
    let r = api.create(fac).await;
    assert!(
        r.errors()[0].contains("no provisionable"),
        "{:?}",
        r.errors()
    );
    // A priority list falls through to the first facility with room.
    let fallback = json!({"facility": ["sv15", "ny5", "da11"], "plan": "c3.small.x86", "operating_system": "ubuntu_22_04"});
    let d = api.create(fallback).await.device();
    assert_eq!(d.facility.unwrap().code.as_deref(), Some("da11"));

    let del = api
        .call(Method::DELETE, &format!("/devices/{a}"), None)
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    // Gone after 0 s: the capacity is free again.
    assert_eq!(api.get(a).await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.create(body("c")).await.status, StatusCode::CREATED);
    sim.shutdown().await;
}

#[tokio::test]
async fn hardware_reservations_in_order_next_available_and_freed_on_delete() {
    let r1 = Uuid::parse_str("aaaaaaaa-0000-4000-8000-000000000001").unwrap();
    let r2 = Uuid::parse_str("aaaaaaaa-0000-4000-8000-000000000002").unwrap();
    let r3 = Uuid::parse_str("aaaaaaaa-0000-4000-8000-000000000003").unwrap();
    let elsewhere = Uuid::new_v4();
    let sim = spawn(SimArgs {
        reservations: vec![
            format!("{r1}=sv:m3.large.x86").parse().unwrap(),
            format!("{r2}=sv:m3.large.x86").parse().unwrap(),
            format!("{r3}=sv:m3.large.x86@{elsewhere}").parse().unwrap(),
        ],
        // Reserved hardware does not use on-demand capacity.
        capacity: vec!["sv:m3.large.x86=0".parse().unwrap()],
        deprovision_seconds: 0.0,
        ..SimArgs::for_tests()
    })
    .await
    .unwrap();
    let api = Api::new(&sim);
    let reserved = |id: &str| {
        json!({"metro": "sv", "plan": "m3.large.x86", "operating_system": "ubuntu_22_04",
               "hardware_reservation_id": id})
    };
    let d1 = api.create(reserved("next-available")).await;
    assert_eq!(d1.status, StatusCode::CREATED, "{:?}", d1.json);
    let d1 = d1.device();
    assert_eq!(d1.hardware_reservation.as_ref().unwrap().id, Some(r1));
    let used = api.create(reserved(&r1.to_string())).await;
    assert_eq!(
        used.errors(),
        [format!("Hardware reservation {r1} is not provisionable")]
    );
    let d2 = api.create(reserved("next-available")).await.device();
    assert_eq!(d2.hardware_reservation.as_ref().unwrap().id, Some(r2));
    let none = api.create(reserved("next-available")).await;
    assert_eq!(none.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        none.errors(),
        ["There are no available hardware reservations"]
    );
    let theirs = api.create(reserved(&r3.to_string())).await;
    assert!(
        theirs.errors()[0].contains("not provisionable"),
        "other project's reservation"
    );
    let wrong_plan = json!({"metro": "sv", "plan": "c3.small.x86", "operating_system": "ubuntu_22_04",
                            "hardware_reservation_id": r1.to_string()});
    assert!(api.create(wrong_plan).await.errors()[0].contains("not provisionable"));
    let wrong_metro = json!({"metro": "da", "plan": "m3.large.x86", "operating_system": "ubuntu_22_04",
                             "hardware_reservation_id": "next-available"});
    assert!(
        api.create(wrong_metro).await.errors()[0].contains("no available hardware reservations")
    );
    let on_demand = api
        .create(json!({"metro": "sv", "plan": "m3.large.x86", "operating_system": "ubuntu_22_04"}))
        .await;
    assert!(on_demand.errors()[0].contains("no provisionable"));

    let id1 = d1.id.unwrap();
    assert_eq!(
        api.call(Method::DELETE, &format!("/devices/{id1}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(api.get(id1).await.status, StatusCode::NOT_FOUND);
    let again = api.create(reserved("next-available")).await.device();
    assert_eq!(
        again.hardware_reservation.unwrap().id,
        Some(r1),
        "freed and reused first"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn locked_device_cannot_be_deleted_until_unlocked() {
    let sim = spawn(SimArgs::for_tests()).await.unwrap();
    let api = Api::new(&sim);
    let mut b = body("locked");
    b["locked"] = json!(true);
    let id = api.create(b).await.device().id.unwrap();
    let r = api
        .call(Method::DELETE, &format!("/devices/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.errors(), ["Cannot delete a locked device"]);
    let r = api
        .call(
            Method::PUT,
            &format!("/devices/{id}"),
            Some(
                json!({"locked": false, "description": "d", "tags": ["t"], "hostname": "renamed"}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let d = r.device();
    assert_eq!(
        (d.locked, d.description.as_deref(), d.hostname.as_deref()),
        (Some(false), Some("d"), Some("renamed"))
    );
    assert_eq!(d.tags, Some(vec!["t".to_string()]));
    let bad = api
        .call(
            Method::PUT,
            &format!("/devices/{id}"),
            Some(json!({"locked": "yes"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.errors()[0].contains("locked"));
    let r = api
        .call(Method::DELETE, &format!("/devices/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    sim.shutdown().await;
}

#[tokio::test]
async fn power_actions_and_bad_action_types() {
    let sim = spawn(SimArgs {
        power_seconds: 0.2,
        ..SimArgs::for_tests()
    })
    .await
    .unwrap();
    let api = Api::new(&sim);
    let id = api.create(body("pw")).await.device().id.unwrap();
    let act = |t: &'static str| {
        let path = format!("/devices/{id}/actions");
        let api = &api;
        async move {
            api.call(Method::POST, &path, Some(json!({"type": t})))
                .await
        }
    };
    assert_eq!(state_of(&api, id).await, Some(DeviceState::Active));
    assert_eq!(act("power_off").await.status, StatusCode::ACCEPTED);
    assert_eq!(state_of(&api, id).await, Some(DeviceState::PoweringOff));
    wait_for(
        &api,
        id,
        Some(DeviceState::Inactive),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(act("power_on").await.status, StatusCode::ACCEPTED);
    assert_eq!(state_of(&api, id).await, Some(DeviceState::PoweringOn));
    wait_for(&api, id, Some(DeviceState::Active), Duration::from_secs(5)).await;
    assert_eq!(act("reboot").await.status, StatusCode::ACCEPTED);
    let bad = act("explode").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.errors()[0].contains("power_on"));
    let none = api
        .call(
            Method::POST,
            &format!("/devices/{id}/actions"),
            Some(json!({})),
        )
        .await;
    assert_eq!(none.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        api.call(
            Method::POST,
            &format!("/devices/{}/actions", Uuid::new_v4()),
            Some(json!({"type": "power_on"}))
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_429_carries_retry_after_and_rate_limit_headers_and_commits_nothing() {
    let sim = spawn(SimArgs {
        fault_rate_429: 1.0,
        retry_after_seconds: 2,
        ..SimArgs::for_tests()
    })
    .await
    .unwrap();
    let api = Api::new(&sim);
    let r = api.create(body("r")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["retry-after"], "2");
    for h in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        let v: u64 = r.headers[h].to_str().unwrap().parse().unwrap();
        if h == "x-ratelimit-remaining" {
            assert_eq!(v, 0);
        }
    }
    assert!(!r.errors().is_empty());
    assert!(sim.devices().is_empty());
    // Tool routes are never faulted.
    let s = api.call(Method::GET, "/_sim/stats", None).await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(sim.stats().faults["429"], 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_5xx_is_500_or_503() {
    let sim = spawn(SimArgs {
        fault_rate_5xx: 1.0,
        ..SimArgs::for_tests()
    })
    .await
    .unwrap();
    let api = Api::new(&sim);
    for _ in 0..8 {
        let r = api.get(Uuid::new_v4()).await;
        assert!(matches!(r.status.as_u16(), 500 | 503), "{}", r.status);
        assert!(!r.errors().is_empty());
    }
    let s = sim.stats();
    assert_eq!(s.faults.values().sum::<u64>(), 8);
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_drop_commits_the_create_but_the_client_gets_a_transport_error() {
    let sim = spawn(SimArgs {
        fault_rate_drop: 1.0,
        ..SimArgs::for_tests()
    })
    .await
    .unwrap();
    let api = Api::new(&sim);
    let err = api
        .try_call(
            Method::POST,
            &format!("/projects/{}/devices", project()),
            Some(body("lost")),
        )
        .await
        .err()
        .expect("no response must arrive");
    assert!(err.status().is_none() && !err.is_timeout(), "{err:?}");
    // reqwest reports kind Request, source hyper IncompleteMessage.
    assert!(err.is_request() && !err.is_connect(), "{err:?}");
    assert!(format!("{err:?}").contains("IncompleteMessage"), "{err:?}");
    let devices = sim.devices();
    assert_eq!(devices.len(), 1, "the create was committed");
    assert_eq!(devices[0].hostname.as_deref(), Some("lost"));
    let s = sim.stats();
    assert_eq!((s.faults["drop"], s.devices_created), (1, 1));
    // The server keeps serving new connections afterwards.
    assert!(api.try_call(Method::GET, "/_sim/stats", None).await.is_ok());
    sim.shutdown().await;
}

#[tokio::test]
async fn rate_limit_per_token() {
    let sim = spawn(SimArgs {
        rate_limit: Some(2.0),
        tokens: vec![TokenSpec::all("a"), TokenSpec::all("b")],
        ..SimArgs::for_tests()
    })
    .await
    .unwrap();
    let a = Api::with_token(&sim, Some("a"));
    let b = Api::with_token(&sim, Some("b"));
    let id = Uuid::new_v4();
    let first = a.get(id).await;
    assert_eq!(first.status, StatusCode::NOT_FOUND);
    assert_eq!(first.headers["x-ratelimit-limit"], "2");
    assert_eq!(a.get(id).await.status, StatusCode::NOT_FOUND);
    let limited = a.get(id).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "1");
    assert_eq!(
        b.get(id).await.status,
        StatusCode::NOT_FOUND,
        "own bucket per token"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(a.get(id).await.status, StatusCode::NOT_FOUND, "refilled");
    assert_eq!(sim.stats().faults["rate_limit"], 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_is_added_to_api_requests() {
    let sim = spawn(SimArgs {
        latency_ms: 150,
        ..SimArgs::for_tests()
    })
    .await
    .unwrap();
    let api = Api::new(&sim);
    let t = std::time::Instant::now();
    api.get(Uuid::new_v4()).await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    sim.shutdown().await;
}

#[tokio::test]
async fn seeded_faults_are_reproducible() {
    async fn pattern() -> Vec<u16> {
        let sim = spawn(SimArgs {
            fault_rate_5xx: 0.5,
            seed: Some(99),
            ..SimArgs::for_tests()
        })
        .await
        .unwrap();
        let api = Api::new(&sim);
        let mut out = Vec::new();
        for _ in 0..20 {
            out.push(api.get(Uuid::new_v4()).await.status.as_u16());
        }
        sim.shutdown().await;
        out
    }
    let a = pattern().await;
    assert_eq!(a, pattern().await);
    assert!(a.contains(&404) && a.iter().any(|s| *s >= 500));
}

#[tokio::test]
async fn scripted_faults_fire_in_order_for_one_operation_only() {
    let sim = spawn(SimArgs::for_tests()).await.unwrap();
    let api = Api::new(&sim);
    sim.inject(Operation::CreateDevice, Fault::ServerError, 1);
    sim.inject(Operation::CreateDevice, Fault::TooManyRequests, 1);
    sim.inject(Operation::CreateDevice, Fault::Drop, 1);
    assert_eq!(
        api.list("").await.devices.len(),
        0,
        "other operations are untouched"
    );
    let r = api.create(body("s")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(
        api.create(body("s")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert!(sim.devices().is_empty(), "429 and 5xx commit nothing");
    let path = format!("/projects/{}/devices", project());
    assert!(
        api.try_call(Method::POST, &path, Some(body("s")))
            .await
            .is_err()
    );
    assert_eq!(sim.devices().len(), 1, "the dropped create was committed");
    assert_eq!(
        api.create(body("s2")).await.status,
        StatusCode::CREATED,
        "script used up"
    );
    let s = sim.stats();
    assert_eq!(
        (s.faults["503"], s.faults["429"], s.faults["drop"]),
        (1, 1, 1)
    );
    assert_eq!(s.requests_of(Operation::CreateDevice), 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_served_too() {
    let sim = spawn(SimArgs::for_tests()).await.unwrap();
    let api = Api {
        http: crate::metal::tls::http_client_builder()
            .http2_prior_knowledge()
            .build()
            .unwrap(),
        ..Api::new(&sim)
    };
    let r = api.create(body("h2")).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(api.list("").await.devices.len(), 1);
    sim.shutdown().await;
}
