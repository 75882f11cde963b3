//! Paging through `GET /projects/{id}/devices` until every device has been seen.
//!
//! The Go provider made one unpaginated call and saw 10 devices (the API's default
//! `per_page`), so orphan collection missed machines. Here the client asks for `per_page`
//! (1000 by default), and the loop follows the server's `meta`, not a count, because the
//! server may cap `per_page` lower than we asked.
//!
//! The query is rebuilt by us for every page (as packngo did), never taken from
//! `meta.next.href`, whose host and scheme we do not trust. The loop itself is IO-free: it
//! takes a `fetch(page)` closure, so its stopping rules are tested without a server, and
//! only one decoded page is alive at a time (no raw page bodies are kept).

use std::{collections::HashSet, future::Future};

use uuid::Uuid;

use super::{Device, DeviceList, Error, ListQuery, Operation};

/// The spec's maximum of `per_page`.
pub const MAX_PER_PAGE: u32 = 1000;

/// The spec's maximum of `page`; a server that still says "next" after this many pages is
/// broken, and we fail rather than loop forever.
pub const MAX_PAGES: u32 = 100_000;

/// The query string of one page: `page`, `per_page` (clamped to `1..=1000`) and the
/// filters of `query`, in a fixed order.
pub fn page_params(query: &ListQuery, page: u32, per_page: u32) -> Vec<(&'static str, String)> {
    let mut params = vec![
        ("page", page.to_string()),
        ("per_page", per_page.clamp(1, MAX_PER_PAGE).to_string()),
    ];
    if let Some(tag) = &query.tag {
        params.push(("tag", tag.clone()));
    }
    if let Some(hostname) = &query.hostname {
        params.push(("hostname", hostname.clone()));
    }
    params
}

/// Whether another page follows `list`, which was fetched as page number `page`.
///
/// Stop when the page is empty, when there is no `meta` or no `meta.next`, or when
/// `current_page >= last_page`. The device count is never used: a server that caps
/// `per_page` returns short pages that are not the last.
pub fn has_next(list: &DeviceList) -> bool {
    if list.devices.is_empty() {
        return false;
    }
    let Some(meta) = &list.meta else { return false };
    if meta.next.is_none() {
        return false;
    }
    !matches!((meta.current_page, meta.last_page), (Some(c), Some(l)) if c >= l)
}

/// Fetch pages `1, 2, ...` with `fetch` until [`has_next`] says stop; return every device
/// in order. See [`collect_kept`].
pub async fn collect_all<F, Fut>(endpoint: Operation, fetch: F) -> Result<Vec<Device>, Error>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<DeviceList, Error>>,
{
    collect_kept(endpoint, fetch, Some).await
}

/// Fetch pages `1, 2, ...` with `fetch` until [`has_next`] says stop, passing each device
/// to `keep` as its page arrives and returning what `keep` kept, in order.
///
/// Only one decoded page is alive at a time, so memory is one page plus the kept values:
/// ListMachines over 10,000 devices keeps 10,000 `(id, hostname)` pairs, not 10,000
/// devices. A device that shows up twice (the list shifted under us while paging) is
/// offered once, by `id`, so a caller never mistakes it for two devices of one machine.
/// More than [`MAX_PAGES`] pages is an [`Error::Decode`] rather than a silently truncated
/// list.
pub async fn collect_kept<T, F, Fut, K>(
    endpoint: Operation,
    mut fetch: F,
    mut keep: K,
) -> Result<Vec<T>, Error>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<DeviceList, Error>>,
    K: FnMut(Device) -> Option<T>,
{
    let mut kept = Vec::new();
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut page = 1u32;
    loop {
        let list = fetch(page).await?;
        let more = has_next(&list);
        for device in list.devices {
            if device.id.is_none_or(|id| seen.insert(id)) {
                kept.extend(keep(device));
            }
        }
        if !more {
            return Ok(kept);
        }
        if page >= MAX_PAGES {
            return Err(Error::Decode {
                endpoint,
                reason: format!("pagination did not end after {MAX_PAGES} pages"),
            });
        }
        page += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::metal::{Href, Meta};

    fn dev(n: u128) -> Device {
        Device {
            id: Some(Uuid::from_u128(n)),
            ..Default::default()
        }
    }

    fn page(ids: &[u128], current: i64, last: i64, next: bool) -> DeviceList {
        DeviceList {
            devices: ids.iter().map(|&n| dev(n)).collect(),
            meta: Some(Meta {
                current_page: Some(current),
                last_page: Some(last),
                next: next.then(|| Href {
                    href: format!("https://evil.example/?page={}", current + 1),
                }),
                ..Default::default()
            }),
        }
    }

    async fn run(pages: Vec<DeviceList>) -> (Result<Vec<Device>, Error>, Vec<u32>) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let asked2 = asked.clone();
        let pages = Arc::new(pages);
        let r = collect_all(Operation::FindProjectDevices, move |p| {
            asked2.lock().unwrap().push(p);
            let pages = pages.clone();
            async move { Ok(pages.get(p as usize - 1).cloned().unwrap_or_default()) }
        })
        .await;
        let asked = asked.lock().unwrap().clone();
        (r, asked)
    }

    #[test]
    fn params_carry_filters_and_clamp() {
        let q = ListQuery {
            tag: Some("cluster:a".into()),
            hostname: Some("m-1".into()),
        };
        assert_eq!(
            page_params(&q, 3, 5000),
            vec![
                ("page", "3".to_string()),
                ("per_page", "1000".to_string()),
                ("tag", "cluster:a".to_string()),
                ("hostname", "m-1".to_string()),
            ]
        );
        assert_eq!(
            page_params(&ListQuery::default(), 1, 0)[1],
            ("per_page", "1".to_string())
        );
        assert_eq!(page_params(&ListQuery::default(), 1, 10).len(), 2);
    }

    #[test]
    fn stopping_rules() {
        assert!(has_next(&page(&[1], 1, 3, true)));
        assert!(!has_next(&page(&[1], 3, 3, true)), "current >= last");
        assert!(!has_next(&page(&[1], 1, 3, false)), "no next");
        assert!(!has_next(&page(&[], 1, 3, true)), "empty page");
        assert!(
            !has_next(&DeviceList {
                devices: vec![dev(1)],
                meta: None
            }),
            "no meta"
        );
        // next present but counters absent: follow next.
        let mut l = page(&[1], 1, 1, true);
        l.meta.as_mut().unwrap().current_page = None;
        assert!(has_next(&l));
    }

    #[tokio::test]
    async fn collects_short_pages_in_order_by_meta() {
        // A server that capped per_page at 2: short pages that are not the last.
        let (r, asked) = run(vec![
            page(&[1, 2], 1, 3, true),
            page(&[3, 4], 2, 3, true),
            page(&[5], 3, 3, false),
        ])
        .await;
        let ids: Vec<u128> = r.unwrap().iter().map(|d| d.id.unwrap().as_u128()).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        assert_eq!(asked, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn duplicates_across_pages_are_dropped() {
        let (r, _) = run(vec![page(&[1, 2], 1, 2, true), page(&[2, 3], 2, 2, false)]).await;
        let ids: Vec<u128> = r.unwrap().iter().map(|d| d.id.unwrap().as_u128()).collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn stops_on_empty_page_even_if_meta_lies() {
        let (r, asked) = run(vec![page(&[1], 1, 9, true), page(&[], 2, 9, true)]).await;
        assert_eq!(r.unwrap().len(), 1);
        assert_eq!(asked, vec![1, 2]);
    }

    /// Each device is offered to `keep` while its own page is the last one fetched (so a
    /// page can be dropped before the next arrives), once per id, and only what `keep`
    /// returns is collected.
    #[tokio::test]
    async fn kept_values_are_reduced_page_by_page() {
        let fetched = Arc::new(Mutex::new(0u32));
        let fetched2 = fetched.clone();
        let pages = Arc::new(vec![
            page(&[1, 2, 3], 1, 3, true),
            page(&[3, 4], 2, 3, true), // 3 again: the list shifted
            page(&[5, 6], 3, 3, false),
        ]);
        let mut offered = Vec::new();
        let kept = collect_kept(
            Operation::FindProjectDevices,
            move |p| {
                *fetched2.lock().unwrap() = p;
                let pages = pages.clone();
                async move { Ok(pages[p as usize - 1].clone()) }
            },
            |d: Device| {
                let n = d.id.unwrap().as_u128();
                offered.push((n, *fetched.lock().unwrap()));
                n.is_multiple_of(2).then_some(n)
            },
        )
        .await
        .unwrap();
        assert_eq!(kept, vec![2, 4, 6]);
        assert_eq!(
            offered,
            vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 3), (6, 3)]
        );
    }

    #[tokio::test]
    async fn errors_propagate() {
        let r = collect_all(Operation::FindProjectDevices, |p| async move {
            if p == 1 {
                Ok(page(&[1], 1, 2, true))
            } else {
                Err(Error::Transport {
                    endpoint: Operation::FindProjectDevices,
                    reason: "reset".into(),
                })
            }
        })
        .await;
        assert!(matches!(r, Err(Error::Transport { .. })));
    }

    #[tokio::test]
    async fn endless_server_hits_the_guard() {
        let r = collect_all(Operation::FindProjectDevices, |p| async move {
            // Always "more", never a last page, fresh ids so nothing dedups.
            Ok(DeviceList {
                devices: vec![dev(u128::from(p))],
                meta: Some(Meta {
                    next: Some(Href { href: "x".into() }),
                    ..Default::default()
                }),
            })
        })
        .await;
        match r {
            Err(Error::Decode { reason, .. }) => assert!(reason.contains("100000")),
            other => panic!("expected guard error, got {other:?}"),
        }
    }
}
