//! Neutron's list queries on rendered resources: equality filters on any
//! attribute (repeated keys mean any of the values), tag filters, `fields`,
//! sorting (`sort_key`/`sort_dir`) and paging (`limit`/`marker`, with a
//! `next` link as openstacksdk follows it).

use serde_json::{json, Value as Json};

/// A list request's query string, repeated keys kept.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pairs: Vec<(String, String)>,
}

/// Keys that steer the listing rather than filter it.
const CONTROLS: &[&str] = &[
    "fields",
    "limit",
    "marker",
    "sort_key",
    "sort_dir",
    "page_reverse",
    "tags",
    "tags-any",
    "not-tags",
    "not-tags-any",
    "fixed_ips",
];

/// A page of a listing: the items and, when more remain, the next page's
/// marker.
#[derive(Debug, PartialEq)]
pub struct Page {
    pub items: Vec<Json>,
    pub next_marker: Option<String>,
    pub limit: Option<usize>,
}

impl ListQuery {
    pub fn parse(query: Option<&str>) -> Self {
        ListQuery {
            pairs: form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        }
    }

    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn first<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        self.all(key).next()
    }

    /// The value of one equality filter, if the query has it (for lookups
    /// the service can answer from an index, such as `device_id`).
    pub fn filter<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        self.first(key)
    }

    /// Whether `item` passes every filter.
    fn keeps(&self, item: &Json) -> bool {
        let mut keys: Vec<&str> = self
            .pairs
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !CONTROLS.contains(k))
            .collect();
        keys.dedup();
        let equal = keys.iter().all(|key| match item.get(*key) {
            // Neutron ignores filters on attributes it does not show.
            None => true,
            Some(v) => self.all(key).any(|want| matches(v, want)),
        });
        equal && self.tags_keep(item) && self.fixed_ips_keep(item)
    }

    fn tags_keep(&self, item: &Json) -> bool {
        let have: Vec<&str> = item["tags"]
            .as_array()
            .map(|t| t.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        let lists = |key| -> Vec<Vec<&str>> {
            self.all(key)
                .map(|v| v.split(',').filter(|t| !t.is_empty()).collect())
                .collect()
        };
        let all_of = |l: &Vec<&str>| l.iter().all(|t| have.contains(t));
        let any_of = |l: &Vec<&str>| l.iter().any(|t| have.contains(t));
        lists("tags").iter().all(all_of)
            && lists("tags-any").iter().all(any_of)
            && !lists("not-tags").iter().any(|l| !l.is_empty() && all_of(l))
            && !lists("not-tags-any").iter().any(any_of)
    }

    /// `fixed_ips=ip_address=10.0.0.5`, `fixed_ips=subnet_id=...`: each
    /// must match one of the port's addresses.
    fn fixed_ips_keep(&self, item: &Json) -> bool {
        let ips = item["fixed_ips"].as_array();
        self.all("fixed_ips").all(|f| {
            let Some((k, v)) = f.split_once('=') else {
                return true;
            };
            ips.is_some_and(|ips| ips.iter().any(|ip| ip[k].as_str() == Some(v)))
        })
    }

    /// Filters, sorts, pages and selects fields; the error is Neutron's
    /// message for a bad control value.
    pub fn apply(&self, mut items: Vec<Json>) -> Result<Page, String> {
        items.retain(|i| self.keeps(i));
        let keys: Vec<&str> = self.all("sort_key").collect();
        let dirs: Vec<&str> = self.all("sort_dir").collect();
        for d in &dirs {
            if *d != "asc" && *d != "desc" {
                return Err(format!(
                    "{d} is an invalid value for sort_dir, valid values are 'asc' and 'desc'"
                ));
            }
        }
        items.sort_by(|a, b| {
            for (i, key) in keys.iter().enumerate() {
                let o = order(&a[*key], &b[*key]);
                let o = if dirs.get(i) == Some(&"desc") {
                    o.reverse()
                } else {
                    o
                };
                if o.is_ne() {
                    return o;
                }
            }
            order(&a["id"], &b["id"])
        });
        if let Some(marker) = self.first("marker") {
            match items.iter().position(|i| i["id"] == marker) {
                Some(at) => {
                    items.drain(..=at);
                }
                None => return Err(format!("marker {marker} could not be found")),
            }
        }
        let limit = match self.first("limit") {
            None => None,
            Some(l) => match l.parse::<usize>() {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(_) => {
                    return Err(format!(
                        "Bad limit request: Limit must be an integer 0 or greater and not '{l}'."
                    ))
                }
            },
        };
        let mut next_marker = None;
        if let Some(n) = limit.filter(|n| items.len() > *n) {
            items.truncate(n);
            next_marker = items
                .last()
                .and_then(|i| i["id"].as_str())
                .map(str::to_owned);
        }
        let fields: Vec<&str> = self.all("fields").collect();
        if !fields.is_empty() {
            for item in &mut items {
                if let Json::Object(m) = item {
                    m.retain(|k, _| fields.contains(&k.as_str()));
                }
            }
        }
        Ok(Page {
            items,
            next_marker,
            limit,
        })
    }

    /// `fields` for a single resource's GET.
    pub fn select(&self, item: &mut Json) {
        let fields: Vec<&str> = self.all("fields").collect();
        if let (false, Json::Object(m)) = (fields.is_empty(), item) {
            m.retain(|k, _| fields.contains(&k.as_str()));
        }
    }
}

/// Whether an attribute's value equals a query string's value.
fn matches(v: &Json, want: &str) -> bool {
    match v {
        Json::String(s) => s == want,
        Json::Bool(b) => {
            let w = want.to_ascii_lowercase();
            (*b && (w == "true" || w == "1")) || (!*b && (w == "false" || w == "0"))
        }
        Json::Number(n) => n.to_string() == want,
        Json::Null => want.is_empty() || want == "None",
        Json::Array(a) => a.iter().any(|e| matches(e, want)),
        Json::Object(_) => false,
    }
}

fn order(a: &Json, b: &Json) -> std::cmp::Ordering {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&y.as_f64().unwrap_or(0.0)),
        (Json::Bool(x), Json::Bool(y)) => x.cmp(y),
        (Json::String(x), Json::String(y)) => x.cmp(y),
        (Json::Null, Json::Null) => std::cmp::Ordering::Equal,
        (Json::Null, _) => std::cmp::Ordering::Less,
        (_, Json::Null) => std::cmp::Ordering::Greater,
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// A listing's body: `{"networks": [...], "networks_links": [next]}`.
pub fn page_body(collection: &str, page: Page, base_url: &str) -> Json {
    let mut body = json!({ collection: page.items });
    if let (Some(marker), Some(limit)) = (page.next_marker, page.limit) {
        body[format!("{collection}_links")] = json!([{
            "rel": "next",
            "href": format!("{base_url}/v2.0/{}?limit={limit}&marker={marker}",
                collection.replace('_', "-")),
        }]);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> Vec<Json> {
        vec![
            json!({"id": "b", "name": "net1", "shared": false, "mtu": 1450, "tags": ["red", "blue"], "subnets": ["s1"]}),
            json!({"id": "a", "name": "net2", "shared": true, "mtu": 1400, "tags": ["red"], "subnets": []}),
            json!({"id": "c", "name": "net1", "shared": false, "mtu": 1450, "tags": [], "subnets": ["s2"]}),
        ]
    }

    fn ids(q: &str) -> Vec<String> {
        ListQuery::parse(Some(q))
            .apply(nets())
            .map(|p| {
                p.items
                    .iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_else(|e| vec![e])
    }

    #[test]
    fn filters_match_by_equality_any_of_repeated_values() {
        assert_eq!(ids(""), ["a", "b", "c"]);
        assert_eq!(ids("name=net1"), ["b", "c"]);
        assert_eq!(ids("name=net1&name=net2"), ["a", "b", "c"]);
        assert_eq!(ids("shared=True"), ["a"]);
        assert_eq!(ids("shared=false&mtu=1450"), ["b", "c"]);
        assert_eq!(ids("subnets=s2"), ["c"]);
        assert_eq!(ids("name=nope"), Vec::<String>::new());
        // Not an attribute: ignored, as Neutron does without filter-validation.
        assert_eq!(ids("colour=green"), ["a", "b", "c"]);
    }

    #[test]
    fn tag_filters() {
        assert_eq!(ids("tags=red"), ["a", "b"]);
        assert_eq!(ids("tags=red,blue"), ["b"]);
        assert_eq!(ids("tags-any=blue,green"), ["b"]);
        assert_eq!(ids("not-tags=red,blue"), ["a", "c"]);
        assert_eq!(ids("not-tags-any=red"), ["c"]);
    }

    #[test]
    fn sorting_paging_and_fields() {
        assert_eq!(ids("sort_key=mtu&sort_dir=desc"), ["b", "c", "a"]);
        assert_eq!(ids("sort_key=name&sort_dir=asc"), ["b", "c", "a"]);
        assert_eq!(ids("limit=2"), ["a", "b"]);
        assert_eq!(ids("limit=2&marker=b"), ["c"]);
        assert!(ids("marker=zz")[0].contains("could not be found"));
        assert!(ids("limit=-1")[0].contains("Bad limit"));
        assert!(ids("sort_dir=up")[0].contains("invalid value"));
        let q = ListQuery::parse(Some("limit=1&fields=id&fields=name"));
        let page = q.apply(nets()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.items, [json!({"id": "a", "name": "net2"})]);
        assert_eq!(page.next_marker.as_deref(), Some("a"));
        let body = page_body("networks", page, "http://x/network");
        assert_eq!(
            body["networks_links"][0]["href"],
            "http://x/network/v2.0/networks?limit=1&marker=a"
        );
    }

    #[test]
    fn fixed_ip_filters_match_one_address() {
        let ports = vec![
            json!({"id": "p1", "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.5"}]}),
            json!({"id": "p2", "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.6"}]}),
        ];
        let q = ListQuery::parse(Some("fixed_ips=ip_address%3D10.0.0.6"));
        let page = q.apply(ports).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0]["id"], "p2");
    }
}
