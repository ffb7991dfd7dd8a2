//! A promo-tiles plugin that fails the way its `mode` parameter says: `panic`, `loop`
//! (until the deadline) or `bogus` (a tile for an offer it was not given). The tile
//! endpoint must answer every one with the slot's fallback tiles, never a 5xx.
#![no_std]
use rekindle_sdk::prelude::*;

struct Failing;

impl Tiles for Failing {
    fn describe() -> TilesInfo {
        TilesInfo::new("hostile-tiles", "0.0.0", "fails on purpose")
            .param(ParamSpec::text("mode", "panic", "panic, loop or bogus"))
    }

    fn decide(ctx: &Context, _: &TileRequest, _: Option<&Profile>, _: &[Offer]) -> Result<Vec<Tile>, String> {
        match ctx.text("mode")? {
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
