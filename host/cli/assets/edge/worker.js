// Rekindle at the edge: decides promo tiles from a signed segment token, with the same
// compiled components and the same steps as the server, so its answers match the
// server's byte for byte (after canonical JSON). Generated bundles import this file with
// `components.js` (the transpiled components) and `snapshot.json` (slots, offers, edge
// segments) beside it. Bindings: REKINDLE_TOKEN_SECRET (required for personal answers),
// REKINDLE_CONFORMANCE = "1" (enables the test endpoint).
import snapshot from "./snapshot.json";
import { components } from "./components.js";

const encoder = new TextEncoder();
const log = { write() {} };
const imports = {
  "rekindle:plugin/log": log,
  "rekindle:plugin/log@0.1.0": log,
  "rekindle:plugin/types": {},
  "rekindle:plugin/types@0.1.0": {},
};

// One instance per component for the isolate's life. Plugins are pure functions of their
// input and the SDK's allocator starts over after every call, so an instance carries
// nothing from one visitor to the next; instantiating costs more than deciding. An
// instance whose call throws is dropped (see `discard`), so a trap never poisons the next.
const instances = new Map();

function instantiate(slot) {
  let instance = instances.get(slot);
  if (!instance) {
    const c = components[slot];
    if (!c) throw new Error(`no component for slot ${slot} in this bundle`);
    instance = c.instantiate((name) => c.modules[name], imports);
    instances.set(slot, instance);
  }
  return instance;
}

function discard(slot) {
  instances.delete(slot);
}

/** A contract value from the typed JSON the server writes (["i", "42"], ["t", "Ann"], ...). */
function value([tag, val]) {
  switch (tag) {
    case "z": return { tag: "null" };
    case "b": return { tag: "boolean", val };
    case "i": return { tag: "integer", val: BigInt(val) };
    case "n": return { tag: "number", val };
    case "t": return { tag: "text", val };
    case "j": return { tag: "json", val };
    default: throw new Error(`unknown value tag ${tag}`);
  }
}

function fields(list) {
  return list.map(([name, ...typed]) => ({ name, value: value(typed) }));
}

function sameValue(a, b) {
  return a.tag === b.tag && a.val === b.val;
}

function byName(a, b) {
  return a.segment < b.segment ? -1 : a.segment > b.segment ? 1 : 0;
}

const BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/** The bytes of canonical unpadded base64url, or null for anything else: the host accepts
 * exactly one spelling of a token, and so does the edge. */
function unbase64url(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
  const bytes = [];
  let bits = 0;
  let value = 0;
  for (const c of text) {
    value = (value << 6) | BASE64URL.indexOf(c);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push((value >> bits) & 255);
    }
  }
  // Spare bits must be zero, or two spellings would decode to the same bytes.
  if (value & ((1 << bits) - 1)) return null;
  return Uint8Array.from(bytes);
}

// The host's token key: HKDF-SHA256 of the secret, for AES-256-GCM (see token.rs).
const TOKEN_INFO = encoder.encode("rekindle segment token v2");
const TOKEN_ASSOCIATED = encoder.encode("rekindle-token-v2");
const tokenKeys = new Map();

function tokenKey(secret) {
  let key = tokenKeys.get(secret);
  if (!key) {
    key = crypto.subtle
      .importKey("raw", encoder.encode(secret), "HKDF", false, ["deriveKey"])
      .then((base) => crypto.subtle.deriveKey({ name: "HKDF", hash: "SHA-256", salt: new Uint8Array(), info: TOKEN_INFO }, base, { name: "AES-GCM", length: 256 }, false, ["decrypt"]));
    tokenKeys.set(secret, key);
  }
  return key;
}

/** The profile a valid token describes, or null (no token, forged, expired, malformed). */
export async function profileFromToken(token, secret, now) {
  if (typeof token !== "string" || !secret) return null;
  const raw = unbase64url(token);
  if (!raw || raw.length <= 28) return null;
  try {
    const opened = await crypto.subtle.decrypt({ name: "AES-GCM", iv: raw.slice(0, 12), additionalData: TOKEN_ASSOCIATED }, await tokenKey(secret), raw.slice(12));
    const claims = JSON.parse(new TextDecoder().decode(opened));
    if (claims.v !== 2 || !Number.isSafeInteger(claims.exp) || typeof claims.sub !== "string") return null;
    if (!(now < claims.exp)) return null;
    return {
      id: claims.sub,
      traits: fields(claims.tr),
      events: [],
      consents: undefined,
      contacts: undefined,
      segments: claims.seg.map(([segment, label, since]) => ({ segment, label: label ?? undefined, since: BigInt(since) })).sort(byName),
      aggregates: fields(claims.ag),
      timezone: claims.tz ?? undefined,
    };
  } catch {
    return null;
  }
}

/** The profile cut to a plugin's declared input, as the host's filter_profile does. */
function cut(profile, input) {
  const named = (list, names) => (names.length ? list.filter((f) => names.includes(f.name)) : undefined);
  return {
    id: profile.id,
    traits: named(profile.traits, input.traits),
    events: [],
    consents: input.consents ? profile.consents : undefined,
    contacts: input.contacts ? profile.contacts : undefined,
    segments: input.segments ? profile.segments : undefined,
    aggregates: named(profile.aggregates, input.aggregates),
    timezone: profile.timezone,
  };
}

/** Re-evaluates the edge segments at `now`, updating the profile's memberships in place. */
export function evaluateSegments(profile, now) {
  const verdicts = [];
  for (const s of snapshot.segments) {
    try {
      const rule = instantiate(s.slot);
      const v = rule.rule.evaluate({ now: BigInt(now), params: fields(s.params) }, cut(profile, s.query));
      const at = profile.segments.findIndex((m) => m.segment === s.name);
      if (v.member && at >= 0) profile.segments[at].label = v.label;
      else if (v.member) profile.segments = [...profile.segments, { segment: s.name, label: v.label, since: BigInt(now) }].sort(byName);
      else if (at >= 0) profile.segments.splice(at, 1);
      verdicts.push({ segment: s.name, member: v.member, label: v.label ?? null, reason: v.reason });
    } catch (e) {
      discard(s.slot);
      verdicts.push({ segment: s.name, error: String(e && e.message ? e.message : e) });
    }
  }
  return verdicts;
}

async function decisionId(slot, visitor, offer, digest) {
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(`${slot}\n${visitor}\n${offer}\n${digest}`)));
  return Array.from(hash.slice(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
}

function contractOffer(o) {
  return {
    id: o.id, slot: o.slot, priority: o.priority, includeSegments: o.includeSegments, excludeSegments: o.excludeSegments,
    category: o.category ?? undefined, title: o.title, body: o.body, image: o.image ?? undefined, link: o.link,
    voucher: o.voucher ?? undefined, holdoutPercent: o.holdoutPercent,
    validUntil: o.validUntil == null ? undefined : BigInt(o.validUntil), attributes: fields(o.attributes),
  };
}

async function fallback(slot, visitorId) {
  const who = visitorId ?? "anonymous";
  const tiles = [];
  for (const [i, t] of slot.fallback.slice(0, slot.max_tiles).entries()) {
    const offer = t.offer_id ?? `fallback-${i}`;
    tiles.push({
      decision_id: await decisionId(slot.name, who, offer, "fallback"), offer_id: offer, title: t.title, body: t.body,
      image: t.image ?? null, link: t.link, voucher: null, plugin: null,
    });
  }
  return { slot: slot.name, fallback: true, known_visitor: false, plugin: null, tiles };
}

// The host's `is_safe_link`, to the character: an http(s) URL or a path on the site.
const WHITESPACE_OR_CONTROL = /[\u0000-\u0020\u007f-\u009f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/;

export function safeLink(url) {
  if (typeof url !== "string" || url === "" || encoder.encode(url).length > 2048 || WHITESPACE_OR_CONTROL.test(url)) return false;
  if (url.startsWith("/")) return !url.startsWith("//") && !url.startsWith("/\\");
  const lower = url.slice(0, 8).toLowerCase();
  if (!lower.startsWith("https://") && !lower.startsWith("http://")) return false;
  try {
    const parsed = new URL(url);
    return (parsed.protocol === "https:" || parsed.protocol === "http:") && parsed.hostname !== "";
  } catch {
    return false;
  }
}

/** One slot's decision for a profile (already carrying current memberships) or null. */
export async function decide(slotName, profile, now, pageUrl) {
  const slot = snapshot.slots.find((s) => s.name === slotName);
  if (!slot) return null;
  const plugin = snapshot.plugins[slot.plugin];
  if (!plugin) return fallback(slot, profile ? profile.id : null);
  let tiles;
  let offered;
  try {
    offered = snapshot.offers
      .filter((o) => o.offer.slot === slot.name)
      .filter((o) => (o.valid_from == null || o.valid_from <= now) && (o.offer.validUntil == null || now < o.offer.validUntil))
      .filter((o) => o.traits.every(([name, ...want]) => profile && profile.traits.some((f) => f.name === name && sameValue(f.value, value(want)))))
      .map((o) => contractOffer(o.offer));
    const instance = instantiate(slot.plugin);
    const request = { slot: slot.name, pageUrl: pageUrl ?? undefined, maxTiles: slot.max_tiles };
    tiles = instance.tiles.decide({ now: BigInt(now), params: fields(slot.params) }, request, profile ? cut(profile, plugin.input) : undefined, offered);
    // The host's output checks: no more tiles than the slot shows, only offers it was given.
    if (tiles.length > slot.max_tiles || tiles.some((t) => !offered.some((o) => o.id === t.offerId))) throw new Error("bad output");
    // As at the host: a tile whose link or image a page must not use is dropped.
    tiles = tiles.filter((t) => safeLink(t.link) && (t.image == null || safeLink(t.image)));
  } catch {
    discard(slot.plugin);
    return fallback(slot, profile ? profile.id : null);
  }
  const who = profile ? profile.id : "anonymous";
  const answer = [];
  for (const t of tiles) {
    answer.push({
      decision_id: await decisionId(slot.name, who, t.offerId, plugin.digest), offer_id: t.offerId, title: t.title, body: t.body,
      image: t.image ?? null, link: t.link, voucher: t.voucher ?? null, plugin: { slot: slot.plugin, digest: plugin.digest },
    });
  }
  return {
    slot: slot.name, fallback: false, known_visitor: !!profile,
    plugin: { slot: slot.plugin, digest: plugin.digest, version: plugin.version }, tiles: answer,
  };
}

// As at the host: each slot is a plugin call, and the endpoint is public.
const MAX_SLOTS_PER_REQUEST = 10;

function json(body, status = 200) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", "cache-control": "private" },
  });
}

function tokenOf(request, body) {
  if (body && typeof body.token === "string" && body.token) return body.token;
  const header = request.headers.get("x-rekindle-token");
  if (header) return header;
  const cookie = request.headers.get("cookie") || "";
  const match = cookie.match(/(?:^|;\s*)rekindle_token=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : null;
}

async function visitor(token, env, now) {
  const profile = await profileFromToken(token, env.REKINDLE_TOKEN_SECRET, now);
  const verdicts = profile ? evaluateSegments(profile, now) : [];
  return { profile, verdicts };
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const now = Date.now();
    if (url.pathname === "/v1/tiles" && request.method === "GET") {
      const slot = url.searchParams.get("slot");
      if (!slot) return json({ error: { code: "invalid_field", field: "slot", message: "`slot` names the page slot to fill" } }, 400);
      const { profile } = await visitor(tokenOf(request), env, now);
      const answer = await decide(slot, profile, now, url.searchParams.get("url"));
      return answer ? json(answer) : json({ error: { code: "not_found", message: `no tile slot \`${slot}\`` } }, 404);
    }
    if (url.pathname === "/v1/tiles" && request.method === "POST") {
      let body;
      try {
        body = await request.json();
      } catch {
        return json({ error: { code: "malformed_json", message: "the body is not valid JSON" } }, 400);
      }
      if (!Array.isArray(body.slots) || body.slots.length < 1 || body.slots.length > MAX_SLOTS_PER_REQUEST) {
        return json({ error: { code: "invalid_field", field: "slots", message: `\`slots\` must name from 1 to ${MAX_SLOTS_PER_REQUEST} slots` } }, 400);
      }
      const names = body.slots.map((entry) => (typeof entry === "string" ? entry : entry && entry.slot));
      const twice = names.findIndex((name, i) => typeof name === "string" && names.indexOf(name) < i);
      if (twice >= 0) {
        return json({ error: { code: "invalid_field", field: `slots[${twice}]`, message: `\`${names[twice]}\` is asked for twice` } }, 400);
      }
      const { profile } = await visitor(tokenOf(request, body), env, now);
      const decisions = [];
      for (const entry of body.slots) {
        const name = typeof entry === "string" ? entry : entry && entry.slot;
        decisions.push((await decide(name, profile, now, body.url)) ?? { slot: name, error: `no tile slot \`${name}\``, fallback: true, tiles: [] });
      }
      return json({ decisions });
    }
    if (url.pathname === "/__rekindle/conformance" && request.method === "POST" && env.REKINDLE_CONFORMANCE === "1") {
      const body = await request.json();
      const runs = Math.max(1, Math.min(10000, body.repeat ?? 1));
      let answer;
      for (let i = 0; i < runs; i++) {
        const { profile, verdicts } = await visitor(body.token, env, body.now);
        answer = { verdicts, decision: await decide(body.slot, profile, body.now, null) };
      }
      return json(answer);
    }
    if (url.pathname === "/__rekindle/health") return json({ ok: true, generated_at: snapshot.generated_at });
    return json({ error: { code: "not_found", message: "not found" } }, 404);
  },
};
