//! The default promo-tile decision: drop offers the visitor is excluded from, held out of or
//! not targeted by; rank the rest by segment match, favourite category and priority; fill
//! the copy with the visitor's traits and the voucher.
#![no_std]

use rekindle_sdk::prelude::*;
use rekindle_sdk::{percent_bucket, render};

/// The plugin; callable natively for tests and benchmarks.
pub struct BasicTiles;

impl Tiles for BasicTiles {
    fn describe() -> TilesInfo {
        TilesInfo::new("tiles-basic", env!("CARGO_PKG_VERSION"), "Segment match, favourite category, then priority")
            .param(ParamSpec::number("segment_weight", 100.0, "Score for matching one of the offer's segments"))
            .param(ParamSpec::number("category_weight", 50.0, "Score for the offer's category being the visitor's favourite"))
            .reads(InputQuery::new().segments().trait_("first_name").aggregate("favourite_category"))
    }

    fn decide(ctx: &Context, request: &TileRequest, profile: Option<&Profile>, offers: &[Offer]) -> Result<Vec<Tile>, String> {
        let segment_weight = ctx.number("segment_weight")?;
        let category_weight = ctx.number("category_weight")?;
        let favourite = profile.and_then(|p| p.aggregate_text("favourite_category"));
        let mut tiles: Vec<Tile> = Vec::new();
        for offer in offers.iter().filter(|o| o.slot == request.slot && o.valid_until.is_none_or(|t| t > ctx.now)) {
            let in_any = |segments: &[String]| segments.iter().any(|s| profile.is_some_and(|p| p.in_segment(s)));
            if in_any(&offer.exclude_segments) || (!offer.include_segments.is_empty() && !in_any(&offer.include_segments)) {
                continue;
            }
            let visitor = profile.map_or("anonymous", |p| p.id.as_str());
            if offer.holdout_percent > 0 && percent_bucket(&format!("{}:{visitor}", offer.id)) < offer.holdout_percent {
                continue;
            }
            let mut score = f64::from(offer.priority);
            let mut why = vec![format!("priority {}", offer.priority)];
            if !offer.include_segments.is_empty() {
                score += segment_weight;
                why.push("segment match".into());
            }
            if favourite.is_some() && offer.category.as_deref() == favourite {
                score += category_weight;
                why.push("favourite category".into());
            }
            let fill = |name: &str| match name {
                "voucher" => offer.voucher.clone(),
                _ => profile.and_then(|p| p.trait_text(name)).map(String::from),
            };
            tiles.push(Tile {
                offer_id: offer.id.clone(),
                title: render(&offer.title, fill),
                body: render(&offer.body, fill),
                image: offer.image.clone(),
                link: offer.link.clone(),
                voucher: offer.voucher.clone(),
                score,
                reason: why.join(", "),
            });
        }
        // Ties keep the offers' order, so the same input always ranks the same.
        tiles.sort_by(|a, b| b.score.total_cmp(&a.score));
        tiles.truncate(request.max_tiles as usize);
        Ok(tiles)
    }
}

rekindle_sdk::export_tiles!(BasicTiles);

#[cfg(test)]
mod tests {
    use rekindle_sdk::Membership;

    use super::*;

    fn offer(id: &str, priority: i32, include: &[&str], category: Option<&str>) -> Offer {
        Offer {
            id: id.into(),
            slot: "home".into(),
            priority,
            include_segments: include.iter().map(|s| (*s).into()).collect(),
            exclude_segments: vec![],
            category: category.map(Into::into),
            title: "Hi {{first_name|there}}".into(),
            body: "Use {{voucher}}".into(),
            image: None,
            link: "/sale".into(),
            voucher: Some("BACK10".into()),
            holdout_percent: 0,
            valid_until: None,
            attributes: vec![],
        }
    }

    fn ctx() -> Context {
        Context {
            now: 0,
            params: vec![
                Field { name: "segment_weight".into(), value: Value::Number(100.0) },
                Field { name: "category_weight".into(), value: Value::Number(50.0) },
            ],
        }
    }

    fn ann() -> Profile {
        Profile {
            id: "ann".into(),
            traits: Some(vec![Field { name: "first_name".into(), value: Value::Text("Ann".into()) }]),
            events: vec![],
            consents: None,
            contacts: None,
            segments: Some(vec![Membership { segment: "lapsing".into(), label: None, since: 0 }]),
            aggregates: Some(vec![Field { name: "favourite_category".into(), value: Value::Text("shoes".into()) }]),
            timezone: None,
        }
    }

    fn request(max_tiles: u32) -> TileRequest {
        TileRequest { slot: "home".into(), page_url: None, max_tiles }
    }

    #[test]
    fn ranks_segment_then_category_then_priority_and_fills_copy() {
        let offers = [offer("generic", 10, &[], None), offer("shoes", 1, &[], Some("shoes")), offer("winback", 0, &["lapsing"], None)];
        let tiles = BasicTiles::decide(&ctx(), &request(3), Some(&ann()), &offers).unwrap();
        let ids: Vec<&str> = tiles.iter().map(|t| t.offer_id.as_str()).collect();
        assert_eq!(ids, ["winback", "shoes", "generic"]);
        assert_eq!(tiles[0].title, "Hi Ann");
        assert_eq!(tiles[0].body, "Use BACK10");
    }

    #[test]
    fn anonymous_visitors_get_untargeted_offers_only() {
        let offers = [offer("generic", 10, &[], None), offer("winback", 0, &["lapsing"], None)];
        let tiles = BasicTiles::decide(&ctx(), &request(3), None, &offers).unwrap();
        assert_eq!(tiles.len(), 1);
        assert_eq!(tiles[0].title, "Hi there");
    }

    #[test]
    fn holdout_is_deterministic_and_max_tiles_is_honoured() {
        let mut held = offer("held", 0, &[], None);
        held.holdout_percent = 100;
        assert!(BasicTiles::decide(&ctx(), &request(3), Some(&ann()), &[held]).unwrap().is_empty());
        let offers = [offer("a", 1, &[], None), offer("b", 2, &[], None)];
        assert_eq!(BasicTiles::decide(&ctx(), &request(1), None, &offers).unwrap().len(), 1);
    }
}
