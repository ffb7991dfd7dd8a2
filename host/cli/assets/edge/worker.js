// Rekindle at the edge: decides promo tiles from a sealed segment token, with the same
// compiled components and the same steps as the server, so its answers match the
// server's byte for byte (after canonical JSON). Generated bundles import this file with
// `components.js` (the transpiled, instrumented components) and `snapshot.json` (slots,
// offers, edge segments, the host's limits) beside it. Bindings: REKINDLE_TOKEN_SECRET
// (required for personal answers), REKINDLE_CONFORMANCE = "1" (enables the test endpoint).
import snapshot from "./snapshot.json";
import { components } from "./components.js";

const encoder = new TextEncoder();

// ---------------------------------------------------------------------------------------
// The sandbox. The host gives every call a fresh instance and stops it at its deadline;
// workerd can do neither cheaply, so `rekindle edge build` instruments each core module
// (see instrument.rs): fuel charged at every function entry and loop, `memory.grow`
// capped as at the host, and every memory and mutable global exported. Before each call
// the worker puts those back as they were at instantiation, so no call sees what an
// earlier visitor's call left behind. A module the snapshot cannot cover (it changes
// tables or drops segments), or one whose memory grew, is instantiated afresh instead.

const PANIC_PREFIX = "panicked at ";
// What the current call's plugin reported as it panicked, as the host's log import keeps it.
let panicked = null;
// The sandbox whose call is running: what the log import charges.
let running = null;
// Units of fuel a byte handed to the host costs: lifting a string is work the plugin's own
// fuel does not see, and a loop logging a megabyte a time must not outlast its deadline.
const BYTES_PER_HOST_FUEL = 4n;
const log = {
  write(_level, message) {
    if (typeof message !== "string") return;
    const own = running && running.state.find((core) => core.memories.length);
    if (own) {
      const left = own.fuel() - (BigInt(message.length) / BYTES_PER_HOST_FUEL + 1n);
      if (left < 0n) {
        own.setFuel(-1n);
        throw new Error("out of fuel in the log import");
      }
      own.setFuel(left);
    }
    if (message.startsWith(PANIC_PREFIX)) panicked = message;
  },
};
const imports = {
  "rekindle:plugin/log": log,
  "rekindle:plugin/log@0.1.0": log,
  "rekindle:plugin/types": {},
  "rekindle:plugin/types@0.1.0": {},
};

/** A fresh instance of a component, with what its core instances held at the start. */
function instantiate(component) {
  const cores = [];
  const instance = component.instantiate((name) => component.modules[name], imports, (module, importObject) => {
    const core = new WebAssembly.Instance(module, importObject);
    cores.push(core);
    return core;
  });
  const state = cores.map(({ exports }) => {
    const memories = [];
    for (const [name, value] of Object.entries(exports)) {
      if (name.startsWith("__rekindle:memory:")) memories.push({ memory: value, image: new Uint8Array(value.buffer).slice() });
    }
    exports["__rekindle:save"]();
    return {
      setFuel: exports["__rekindle:set-fuel"], fuel: exports["__rekindle:fuel"], wanted: exports["__rekindle:memory-wanted"],
      restore: exports["__rekindle:restore"], memories,
    };
  });
  return { instance, state, used: false };
}

/** Puts every memory and global back as it was at instantiation; false when it cannot. */
function restore(sandbox) {
  for (const core of sandbox.state) {
    for (const m of core.memories) if (m.memory.buffer.byteLength !== m.image.length) return false;
  }
  for (const core of sandbox.state) {
    for (const m of core.memories) new Uint8Array(m.memory.buffer).set(m.image);
    core.restore();
  }
  return true;
}

const sandboxes = new Map();

/** A sandbox for one call into the component in `slot`, in its initial state.
 * `isolation` is "restore" for every real request; the conformance endpoint may ask for
 * "fresh" (a new instance per call) or "reuse" (no restoring, unsafe) to measure what
 * isolation costs. */
function sandbox(slot, isolation) {
  const component = components[slot];
  if (!component) throw new Error(`no component for slot ${slot} in this bundle`);
  let box = sandboxes.get(slot);
  if (box && box.used && !(isolation === "reuse" || (isolation === "restore" && component.restorable && restore(box)))) box = null;
  if (!box) {
    box = instantiate(component);
    sandboxes.set(slot, box);
  }
  // The plugin's own module gets the deadline's fuel; the modules that only connect its
  // imports get a little, so a loop hidden in one cannot double the budget.
  const fuel = BigInt(component.fuel);
  const shimFuel = BigInt(component.shimFuel);
  for (const core of box.state) core.setFuel(core.memories.length ? fuel : shimFuel);
  box.used = true;
  return box;
}

const OUT_OF_BOUNDS = "out of bounds memory access; in a Rust plugin this usually means a stack overflow (deep or endless recursion in a 64 KiB stack)";
// wasmtime's words for each trap, keyed by V8's, so an error reads the same at both.
const TRAPS = [
  ["unreachable", "wasm `unreachable` instruction executed"],
  ["memory access out of bounds", OUT_OF_BOUNDS],
  ["out of bounds memory access", OUT_OF_BOUNDS],
  ["divide by zero", "integer divide by zero"],
  ["remainder by zero", "integer divide by zero"],
  ["divide result unrepresentable", "integer overflow"],
  ["float unrepresentable in integer range", "invalid conversion to integer"],
  ["table index is out of bounds", "undefined element: out of bounds table access"],
  ["null function or function signature mismatch", "indirect call type mismatch"],
];

/** Why a call failed, in the host's words (its CallError's text). */
function callError(error, box, limits) {
  const wanted = box.state.reduce((most, core) => (core.wanted() > most ? core.wanted() : most), 0n);
  if (wanted > 0n) return `out of memory: tried to grow linear memory to ${wanted} bytes; the cap is ${limits.memory_bytes} bytes`;
  if (box.state.some((core) => core.fuel() === -1n)) return limits.timed_out;
  if (error && error.constructor && error.constructor.name === "ComponentError") return `the plugin returned an error: ${error.payload}`;
  if (error instanceof RangeError) return "trapped: stack overflow";
  const message = String(error && error.message ? error.message : error);
  const trap = TRAPS.find(([v8]) => message.includes(v8));
  if (trap && trap[0] === "unreachable" && panicked) return `trapped: ${panicked}`;
  return `trapped: ${trap ? trap[1] : message}`;
}

/** Calls `run` with the instance of the component in `slot`, as the host calls a plugin:
 * a failure of any kind comes back as `{ error }` with the host's text, and the instance is
 * never used again. */
function call(slot, limits, run, isolation = "restore") {
  let box = { state: [] };
  panicked = null;
  try {
    // Inside the `try`: an instantiation that fails (a start function that traps) is
    // this call's error, as at the host, never the request's.
    box = sandbox(slot, isolation);
    running = box;
    return { value: run(box.instance) };
  } catch (e) {
    sandboxes.delete(slot);
    return { error: callError(e, box, limits) };
  } finally {
    running = null;
  }
}

// ---------------------------------------------------------------------------------------
// Output limits, counted as the host counts them (plugin.rs `OutputSize`): the UTF-8 bytes
// of every string, and ITEM_BYTES for each list item.
const ITEM_BYTES = 16;

function bytes(text) {
  return text == null ? 0 : encoder.encode(text).length;
}

function verdictSize(v) {
  return bytes(v.reason) + bytes(v.label);
}

function tilesSize(tiles) {
  return tiles.reduce((sum, t) => sum + bytes(t.offerId) + bytes(t.title) + bytes(t.body) + bytes(t.image) + bytes(t.link) + bytes(t.voucher) + bytes(t.reason) + 8 + ITEM_BYTES, 0);
}

function oversize(size, limits) {
  return size > limits.output_bytes ? `bad output: output is ${size} bytes; the limit is ${limits.output_bytes} bytes` : null;
}

// ---------------------------------------------------------------------------------------
// Values, profiles and tokens.

/** Typed fields from the snapshot (["name", "i", "42"], ...), read as a token's are; the
 * host wrote them, so one that does not read is a broken bundle. */
function fields(list) {
  const out = typedFields(list);
  if (!out) throw new Error("the snapshot holds a typed field that does not read");
  return out;
}

function sameValue(a, b) {
  return a.tag === b.tag && a.val === b.val;
}

/** Orders strings by code point, as Rust compares them (JavaScript's `<` compares UTF-16
 * units, which puts U+FF5E after U+1F600). */
export function byCodePoint(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

function byName(a, b) {
  return byCodePoint(a.segment, b.segment);
}

// Each base64url character's six bits, or -1.
const BASE64URL = new Int8Array(128).fill(-1);
for (const [i, c] of Array.from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_").entries()) BASE64URL[c.charCodeAt(0)] = i;

/** The bytes of canonical unpadded base64url, or null for anything else: the host accepts
 * exactly one spelling of a token, and so does the edge. */
export function unbase64url(text) {
  if (text.length % 4 === 1) return null;
  const out = new Uint8Array((text.length * 3) >> 2);
  let bits = 0;
  let acc = 0;
  let at = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const six = c < 128 ? BASE64URL[c] : -1;
    if (six < 0) return null;
    acc = ((acc << 6) | six) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (acc >> bits) & 255;
    }
  }
  // Spare bits must be zero, or two spellings would decode to the same bytes.
  if (acc & ((1 << bits) - 1)) return null;
  return out;
}

// The host's token key: HKDF-SHA256 of the secret, for AES-256-GCM (see host/tiles/src/token.rs).
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

/** A number the token's JSON wrote with a fraction or an exponent, which the host's
 * parser reads as a float and never as a time (JSON.parse would make 2.0 an integer). */
class Float {
  constructor(value) {
    this.value = value;
  }
}

function parseClaims(text) {
  return JSON.parse(text, (_key, v, context) => (typeof v === "number" && context && /[.eE]|^-0$/.test(context.source) ? new Float(v) : v));
}

const isTime = (t) => Number.isSafeInteger(t) && t >= 0 && t <= snapshot.latest_timestamp;
const isText = (t) => typeof t === "string";
const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;

/** A typed value from the token as the host's `token::untyped` reads it, or undefined. */
function typedValue([tag, val]) {
  switch (tag) {
    case "z": return { tag: "null" };
    case "b": return typeof val === "boolean" ? { tag: "boolean", val } : undefined;
    case "i": {
      if (!isText(val) || !/^[+-]?[0-9]+$/.test(val)) return undefined;
      const n = BigInt(val);
      return n >= I64_MIN && n <= I64_MAX ? { tag: "integer", val: n } : undefined;
    }
    case "n": return typeof val === "number" ? { tag: "number", val } : val instanceof Float ? { tag: "number", val: val.value } : undefined;
    case "t": return isText(val) ? { tag: "text", val } : undefined;
    case "j": return isText(val) ? { tag: "json", val } : undefined;
    default: return undefined;
  }
}

function typedFields(list) {
  if (!Array.isArray(list)) return undefined;
  const out = [];
  for (const entry of list) {
    if (!Array.isArray(entry) || !isText(entry[0])) return undefined;
    const v = typedValue(entry.slice(1));
    if (!v) return undefined;
    out.push({ name: entry[0], value: v });
  }
  return out;
}

/** The profile a valid token describes, checked as the host's `token::open` checks it, or
 * null (no token, another spelling, forged, expired, malformed). */
export async function profileFromToken(token, secret, now) {
  if (typeof token !== "string" || !secret) return null;
  const raw = unbase64url(token);
  if (!raw || raw.length <= 28) return null;
  let claims;
  try {
    const opened = await crypto.subtle.decrypt({ name: "AES-GCM", iv: raw.slice(0, 12), additionalData: TOKEN_ASSOCIATED }, await tokenKey(secret), raw.slice(12));
    const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(opened);
    claims = parseClaims(text);
    if (!serdeAccepts(claims)) return null;
  } catch {
    return null;
  }
  if (!claims || typeof claims !== "object" || Array.isArray(claims)) return null;
  if (claims.v !== 2 || !isText(claims.sub) || !isTime(claims.iat) || !isTime(claims.exp) || !Array.isArray(claims.seg)) return null;
  const segments = [];
  for (const m of claims.seg) {
    if (!Array.isArray(m) || !isText(m[0]) || !isTime(m[2])) return null;
    segments.push({ segment: m[0], label: isText(m[1]) ? m[1] : undefined, since: BigInt(m[2]) });
  }
  const traits = typedFields(claims.tr);
  const aggregates = typedFields(claims.ag);
  if (!traits || !aggregates || !(now < claims.exp)) return null;
  // Absent in tokens issued before they existed.
  const userIds = claims.uid === undefined ? [] : claims.uid;
  if (!Array.isArray(userIds) || !userIds.every(isText)) return null;
  const texts = (list) => Array.isArray(list) && list.every(isText);
  const cat = claims.cat ?? null;
  if (cat !== null && (typeof cat !== "object" || Array.isArray(cat) || !isTime(cat.at) || !texts(cat.tr) || !texts(cat.ag))) return null;
  return {
    id: claims.sub,
    traits,
    events: [],
    consents: undefined,
    contacts: undefined,
    segments: segments.sort(byName),
    aggregates,
    timezone: isText(claims.tz) ? claims.tz : undefined,
    userIds,
    stale: !covers(cat),
  };
}

/** Whether a token's catalog covers everything this bundle reads: each trait and
 * aggregate the token must carry, and every segment as last defined before the bundle was
 * built (the token's catalog read after that). When it does, the edge's answer is
 * provably the origin's; when it does not (the catalog changed after the token was
 * issued), the answer is marked stale. */
function covers(cat) {
  if (!cat) return false;
  const need = snapshot.token;
  const segmentsKnown = need.segments_changed_at == null || cat.at > need.segments_changed_at;
  return segmentsKnown && need.traits.every((n) => cat.tr.includes(n)) && need.aggregates.every((n) => cat.ag.includes(n));
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

// ---------------------------------------------------------------------------------------
// Decisions.

/** Re-evaluates the edge segments at `now`, updating the profile's memberships in place. */
export function evaluateSegments(profile, now, isolation = "restore") {
  const limits = snapshot.limits.rule;
  const verdicts = [];
  for (const s of snapshot.segments) {
    const ctx = { now: BigInt(now), params: fields(s.params) };
    const input = cut(profile, s.query);
    const result = call(s.slot, limits, (instance) => instance.rule.evaluate(ctx, input), isolation);
    const v = result.value;
    const error = result.error ?? oversize(verdictSize(v), limits);
    if (error) {
      verdicts.push({ segment: s.name, error });
      continue;
    }
    const at = profile.segments.findIndex((m) => m.segment === s.name);
    if (v.member && at >= 0) profile.segments[at].label = v.label;
    else if (v.member) profile.segments = [...profile.segments, { segment: s.name, label: v.label, since: BigInt(now) }].sort(byName);
    else if (at >= 0) profile.segments.splice(at, 1);
    verdicts.push({ segment: s.name, member: v.member, label: v.label ?? null, reason: v.reason, ...(s.cutoffs_at == null ? {} : { cutoffs_at: s.cutoffs_at }) });
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

/** The slot's fallback tiles: the same for every visitor, so their ids name no one. */
async function fallback(slot) {
  const tiles = [];
  for (const [i, t] of slot.fallback.slice(0, slot.max_tiles).entries()) {
    const offer = t.offer_id ?? `fallback-${i}`;
    tiles.push({
      decision_id: await decisionId(slot.name, "anonymous", offer, "fallback"), offer_id: offer, title: t.title, body: t.body,
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
export async function decide(slotName, profile, now, pageUrl, isolation = "restore") {
  const slot = snapshot.slots.find((s) => s.name === slotName);
  if (!slot) return null;
  const plugin = snapshot.plugins[slot.plugin];
  if (!plugin) return fallback(slot);
  const limits = snapshot.limits.tiles;
  const offered = snapshot.offers
    .filter((o) => o.offer.slot === slot.name)
    .filter((o) => (o.valid_from == null || o.valid_from <= now) && (o.offer.validUntil == null || now < o.offer.validUntil))
    .filter((o) => o.traits.every(([name, ...want]) => profile && profile.traits.some((f) => f.name === name && sameValue(f.value, typedValue(want)))))
    .map((o) => contractOffer(o.offer));
  const ctx = { now: BigInt(now), params: fields(slot.params) };
  const request = { slot: slot.name, pageUrl: pageUrl ?? undefined, maxTiles: slot.max_tiles };
  const input = profile ? cut(profile, plugin.input) : undefined;
  const result = call(slot.plugin, limits, (instance) => instance.tiles.decide(ctx, request, input, offered), isolation);
  const stale = profile && profile.stale ? { stale: true } : {};
  let tiles = result.value;
  // The host's output checks: its size, no more tiles than the slot shows, only offers it
  // was given. Any failure serves the fallback.
  if (result.error || oversize(tilesSize(tiles), limits) || tiles.length > slot.max_tiles || tiles.some((t) => !offered.some((o) => o.id === t.offerId))) {
    return { ...(await fallback(slot)), ...stale };
  }
  // As at the host: a tile whose link or image a page must not use is dropped.
  tiles = tiles.filter((t) => safeLink(t.link) && (t.image == null || safeLink(t.image)));
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
    plugin: { slot: slot.plugin, digest: plugin.digest, version: plugin.version }, tiles: answer, ...stale,
  };
}

// ---------------------------------------------------------------------------------------
// HTTP, validated exactly as the host's /v1/tiles validates (api/tiles.rs).

// As at the host: each slot is a plugin call, and the endpoint is public.
const MAX_SLOTS_PER_REQUEST = 10;
const MAX_TEXT_BYTES = 200;
const MAX_URL_BYTES = 2048;
const MAX_TOKEN_BYTES = 16 << 10;
// serde_json's nesting limit.
const MAX_DEPTH = 128;

/** A 4xx the handler answers with, in the host's JSON error shape. */
class HttpError {
  constructor(status, body) {
    this.status = status;
    this.body = body;
  }
}

class BadRequest extends HttpError {
  constructor(field, message, code = "invalid_field") {
    super(400, { error: field == null ? { code, message } : { code, field, message } });
  }
}

/** JSON as serde_json writes the host's answers: object keys in code-point order, no
 * spaces, so an answer is the origin's byte for byte and so is its ETag. */
export function canonical(v) {
  if (Array.isArray(v)) return `[${v.map((item) => (item === undefined ? "null" : canonical(item))).join(",")}]`;
  if (v && typeof v === "object") {
    const keys = Object.keys(v).filter((k) => v[k] !== undefined).sort(byCodePoint);
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(",")}}`;
  }
  return JSON.stringify(v);
}

function json(body, status = 200) {
  return new Response(canonical(body), {
    status,
    headers: { "content-type": "application/json", "cache-control": "private" },
  });
}

/** A decision answer as the host's `cached` serves it: an ETag over the body, and 304
 * when the page already holds this exact answer. */
async function cached(request, body) {
  const text = canonical(body);
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
  const etag = `"${Array.from(hash.slice(0, 10), (b) => b.toString(16).padStart(2, "0")).join("")}"`;
  const given = request.headers.get("if-none-match");
  const headers = { "cache-control": "private", etag };
  if (given && given.split(",").some((tag) => tag.trim().replace(/^W\//, "") === etag)) return new Response(null, { status: 304, headers });
  return new Response(text, { status: 200, headers: { "content-type": "application/json", ...headers } });
}

/** A string field of at most `max` UTF-8 bytes, empty meaning absent, as `optional_text`. */
function optionalText(v, field, max = MAX_TEXT_BYTES) {
  if (v === undefined || v === null) return null;
  if (typeof v === "string" && bytes(v) <= max) return v === "" ? null : v;
  throw new BadRequest(field, `\`${field}\` must be a string of at most ${max} bytes`);
}

/** The first NUL character in `v`, by the path the host's `refuse_nul` names. */
function refuseNul(v, path) {
  if (typeof v === "string") {
    if (v.includes("\0")) throw new BadRequest(path, `${path}: contains a NUL character`);
  } else if (Array.isArray(v)) {
    v.forEach((item, i) => refuseNul(item, `${path}[${i}]`));
  } else if (v && typeof v === "object") {
    // serde_json's map is ordered by key, by code point.
    for (const key of Object.keys(v).sort(byCodePoint)) {
      const at = `${path}.${key}`;
      if (key.includes("\0")) throw new BadRequest(at, `${at}: a key contains a NUL character`);
      refuseNul(v[key], at);
    }
  }
}

/** Whether a parsed value is what serde_json would have accepted: no lone surrogates (which
 * it refuses to decode) and no deeper nesting than it allows. */
function serdeAccepts(v, depth = 1) {
  if (typeof v === "string") return v.isWellFormed();
  if (typeof v === "number") return Number.isFinite(v);
  if (v && typeof v === "object") {
    if (depth >= MAX_DEPTH) return false;
    for (const k in v) if (!k.isWellFormed() || !serdeAccepts(v[k], depth + 1)) return false;
  }
  return true;
}

// The host's limit for a tile request's body (axum's default), and its words.
const MAX_BODY_BYTES = 2 << 20;
const TOO_LARGE = "the body is over this endpoint's size limit";

async function parseBody(request) {
  const raw = await request.arrayBuffer();
  if (raw.byteLength > MAX_BODY_BYTES) throw new HttpError(413, { error: { code: "too_large", message: TOO_LARGE } });
  let body;
  try {
    // As serde_json reads bytes: UTF-8 only, and a byte-order mark is not whitespace.
    body = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(raw));
  } catch {
    body = undefined;
  }
  if (body === undefined || !serdeAccepts(body)) throw new BadRequest(null, "the body is not valid JSON", "malformed_json");
  refuseNul(body, "body");
  return body;
}

/** The token a request carries: in the body, else `X-Rekindle-Token`, else the site's
 * `rekindle_token` cookie (the edge sits on the shop's domain; the origin never sees it). */
function tokenOf(request, given) {
  let header = request.headers.get("x-rekindle-token");
  // The host reads a header that is not visible ASCII as U+FFFD, which proves nobody.
  if (header !== null && !/^[\t\x20-\x7e]*$/.test(header)) header = "\ufffd";
  const token = given === undefined || given === null ? header : given;
  if (token !== undefined && token !== null) {
    if (typeof token !== "string" || bytes(token) > MAX_TOKEN_BYTES) throw new BadRequest("token", `\`token\` must be a string of at most ${MAX_TOKEN_BYTES} bytes`);
    if (token !== "") return token;
  }
  const match = (request.headers.get("cookie") || "").match(/(?:^|;\s*)rekindle_token=([^;]*)/);
  if (!match) return null;
  try {
    const token = decodeURIComponent(match[1]);
    return token && bytes(token) <= MAX_TOKEN_BYTES ? token : null;
  } catch {
    return null;
  }
}

/** Who a token proves the visitor is, and their verdicts; nobody when the page names
 * someone (`userId`) the token was not issued to, as at the origin (a token left behind on
 * a shared computer). */
async function visitor(token, env, now, isolation = "restore", userId = null) {
  let profile = await profileFromToken(token, env.REKINDLE_TOKEN_SECRET, now);
  if (profile && userId !== null && userId !== profile.id && !profile.userIds.includes(userId)) profile = null;
  const verdicts = profile ? evaluateSegments(profile, now, isolation) : [];
  return { profile, verdicts };
}

async function decideOne(request, url, env, now) {
  const get = (key) => url.searchParams.get(key) ?? undefined;
  const slot = optionalText(get("slot"), "slot");
  if (slot === null) throw new BadRequest("slot", "`slot` names the page slot to fill");
  optionalText(get("anonymousId"), "anonymousId");
  const token = tokenOf(request, undefined);
  const [, userId] = ["writeKey", "userId", "userHash"].map((field) => optionalText(get(field), field));
  const pageUrl = optionalText(get("url"), "url", MAX_URL_BYTES);
  const { profile } = await visitor(token, env, now, "restore", userId);
  const answer = await decide(slot, profile, now, pageUrl);
  return answer ? cached(request, answer) : json({ error: { code: "not_found", message: `no tile slot \`${slot}\`` } }, 404);
}

async function decideMany(request, env, now) {
  const body = await parseBody(request);
  const slots = body && typeof body === "object" && !Array.isArray(body) ? body.slots : undefined;
  if (!Array.isArray(slots)) throw new BadRequest("slots", "`slots` must be a list of slot names");
  if (slots.length < 1 || slots.length > MAX_SLOTS_PER_REQUEST) throw new BadRequest("slots", `\`slots\` must name from 1 to ${MAX_SLOTS_PER_REQUEST} slots`);
  const names = slots.map((entry, i) => {
    if (typeof entry === "string") return entry;
    if (entry && typeof entry === "object" && !Array.isArray(entry)) {
      if (typeof entry.slot === "string") return entry.slot;
      throw new BadRequest(`slots[${i}].slot`, "each slot object needs a `slot` name");
    }
    throw new BadRequest(`slots[${i}]`, "each entry is a slot name");
  });
  const twice = names.findIndex((name, i) => names.indexOf(name) < i);
  if (twice >= 0) throw new BadRequest(`slots[${twice}]`, `\`${names[twice]}\` is asked for twice`);
  optionalText(body.anonymousId, "anonymousId");
  const token = tokenOf(request, body.token);
  const [, userId] = ["writeKey", "userId", "userHash"].map((field) => optionalText(body[field], field));
  const pageUrl = optionalText(body.url, "url", MAX_URL_BYTES);
  const { profile } = await visitor(token, env, now, "restore", userId);
  const decisions = [];
  for (const name of names) {
    decisions.push((await decide(name, profile, now, pageUrl)) ?? { slot: name, error: `no tile slot \`${name}\``, fallback: true, tiles: [] });
  }
  return cached(request, { decisions });
}

/** The test endpoint: `{token, slot, now, repeat?}` decided as the host's
 * /admin/edge/reference decides it. */
async function conformance(request, env) {
  const body = await parseBody(request);
  const now = body && body.now;
  if (!Number.isSafeInteger(now) || now < 0 || now > snapshot.latest_timestamp) throw new BadRequest("now", "`now` must lie between 1970 and the end of year 9999");
  const slot = optionalText(body.slot, "slot");
  if (slot === null) throw new BadRequest("slot", "`slot` names the page slot");
  const runs = Math.max(1, Math.min(10000, Number.isSafeInteger(body.repeat) ? body.repeat : 1));
  let answer;
  const isolation = ["fresh", "reuse"].includes(body.isolation) ? body.isolation : "restore";
  for (let i = 0; i < runs; i++) {
    const { profile, verdicts } = await visitor(body.token, env, now, isolation);
    const decision = await decide(slot, profile, now, null, isolation);
    if (!decision) return json({ error: { code: "not_found", message: `no tile slot \`${slot}\`` } }, 404);
    answer = { verdicts, decision };
  }
  return json(answer);
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const now = Date.now();
    try {
      if (url.pathname === "/v1/tiles" && request.method === "GET") return await decideOne(request, url, env, now);
      if (url.pathname === "/v1/tiles" && request.method === "HEAD") {
        const answer = await decideOne(request, url, env, now);
        return new Response(null, { status: answer.status, headers: answer.headers });
      }
      if (url.pathname === "/v1/tiles" && request.method === "POST") return await decideMany(request, env, now);
      if (url.pathname === "/v1/tiles") return new Response(null, { status: 405, headers: { allow: "GET,HEAD,POST" } });
      if (url.pathname === "/__rekindle/conformance" && request.method === "POST" && env.REKINDLE_CONFORMANCE === "1") return await conformance(request, env);
      if (url.pathname === "/__rekindle/token" && request.method === "POST" && env.REKINDLE_CONFORMANCE === "1") {
        // The shared token vectors: `{token, secret, now}` opened as a visitor would be.
        const body = await parseBody(request);
        const profile = await profileFromToken(body.token, body.secret, body.now);
        return json({ valid: !!profile, sub: profile ? profile.id : null });
      }
      if (url.pathname === "/__rekindle/health") return json({ ok: true, generated_at: snapshot.generated_at });
      return json({ error: { code: "not_found", message: "not found" } }, 404);
    } catch (e) {
      if (e instanceof HttpError) return json(e.body, e.status);
      // Never a 500 for a page: whatever went wrong, the answer is an empty decision list.
      console.error("rekindle edge:", e && e.stack ? e.stack : e);
      return json({ error: { code: "internal", message: "internal error" } }, 500);
    }
  },
};
