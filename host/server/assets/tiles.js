/* Rekindle promo tiles: fills every <div data-rekindle-slot="..."> on the page and reports
 * impressions and clicks as "Promo Viewed" and "Promo Clicked" events. No dependencies.
 *
 *   <script src="https://HOST/v1/tiles.js" data-write-key="KEY"
 *           data-user-id="OPTIONAL" data-user-hash="HMAC-SHA256 OF THE USER ID" async></script>
 *
 * Personal tiles need proof of who the visitor is: the site's backend signs the user id
 * with the source's identity secret (data-user-hash, lower-case hex). The host answers a
 * proved visitor with a sealed segment token, kept in the first-party cookie
 * rekindle_token, which proves them on later pages without the hash. A user id with no
 * proof gets the anonymous tiles.
 *
 * With data-edge-url="https://shop.example/rekindle" decisions come from an edge bundle
 * (rekindle edge build) instead, which reads the same token; when the edge says the token
 * is stale (issued before the catalog changed), the snippet asks the host once instead.
 *
 * Visitors without a user id get an anonymous id kept in localStorage (analytics.js's, when
 * the page has one). window.rekindle.identify(userId, userHash) decides again after a
 * login; window.rekindle.reset() forgets the visitor at logout. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var base = new URL(script.src, location.href).origin;
  var writeKey = script.getAttribute("data-write-key") || "";
  var edge = script.getAttribute("data-edge-url");

  function anonymousId() {
    try {
      var ajs = localStorage.getItem("ajs_anonymous_id");
      if (ajs) return ajs.replace(/^"|"$/g, "");
      var own = localStorage.getItem("rekindle_anonymous_id");
      if (own) return own;
      own = (crypto.randomUUID && crypto.randomUUID()) || String(Math.random()).slice(2) + Date.now();
      localStorage.setItem("rekindle_anonymous_id", own);
      return own;
    } catch (e) {
      return null;
    }
  }

  function forgetToken() {
    document.cookie = "rekindle_token=; path=/; max-age=0; SameSite=Lax";
    document.cookie = "rekindle_token_user=; path=/; max-age=0; SameSite=Lax";
  }

  var visitor = {
    userId: script.getAttribute("data-user-id") || null,
    userHash: script.getAttribute("data-user-hash") || null,
    anonymousId: anonymousId()
  };

  function cookie(name) {
    var match = document.cookie.match(new RegExp("(?:^|;\\s*)" + name + "=([^;]*)"));
    try {
      return match ? decodeURIComponent(match[1]) : null;
    } catch (e) {
      return null;
    }
  }

  // A token kept for one user is not proof for another on a shared computer: the page
  // names who is logged in, and a token stored for someone else is dropped.
  function storedToken() {
    var token = cookie("rekindle_token");
    if (token && visitor.userId && cookie("rekindle_token_user") !== visitor.userId) {
      forgetToken();
      return null;
    }
    return token;
  }

  function messageId() {
    return (crypto.randomUUID && crypto.randomUUID()) || String(Math.random()).slice(2) + Date.now();
  }

  // text/plain keeps these simple cross-origin requests: no preflight round trip.
  function send(path, body, beacon, origin) {
    var text = JSON.stringify(body);
    if (beacon && navigator.sendBeacon) {
      return navigator.sendBeacon(base + path, new Blob([text], { type: "text/plain" }));
    }
    return fetch((origin || base) + path, { method: "POST", body: text, headers: { "Content-Type": "text/plain" }, keepalive: true, credentials: origin ? "include" : "omit" });
  }

  // The host's segment token, for an edge on the site's own domain to read.
  function keepToken(response) {
    var token = response.headers.get("x-rekindle-token");
    if (token) {
      var attributes = "; path=/; max-age=604800; SameSite=Lax" + (location.protocol === "https:" ? "; Secure" : "");
      document.cookie = "rekindle_token=" + encodeURIComponent(token) + attributes;
      document.cookie = "rekindle_token_user=" + encodeURIComponent(visitor.userId || "") + attributes;
    }
    return response;
  }

  function track(event, tile, slot) {
    send("/v1/track", {
      writeKey: writeKey, type: "track", event: event, messageId: messageId(), timestamp: new Date().toISOString(),
      userId: visitor.userId, anonymousId: visitor.anonymousId,
      properties: { decision_id: tile.decision_id, offer_id: tile.offer_id, slot: slot, fallback: !!tile.fallback, url: location.href }
    }, true);
  }

  var seen = {};
  var observer = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      if (!entry.isIntersecting) return;
      var el = entry.target;
      observer.unobserve(el);
      if (seen[el.__rekindle.tile.decision_id]) return;
      seen[el.__rekindle.tile.decision_id] = true;
      track("Promo Viewed", el.__rekindle.tile, el.__rekindle.slot);
    });
  }, { threshold: 0.5 }) : null;

  function text(tag, className, value) {
    var el = document.createElement(tag);
    el.className = className;
    el.textContent = value;
    return el;
  }

  // The host refuses these already; a page does not take a link on trust either.
  function safeLink(url) {
    if (typeof url !== "string" || url === "" || /[\u0000-\u0020\u007f-\u009f]/.test(url)) return false;
    if (url.charAt(0) === "/") return url.charAt(1) !== "/" && url.charAt(1) !== "\\";
    if (!/^https?:\/\//i.test(url)) return false;
    try {
      var protocol = new URL(url).protocol;
      return protocol === "https:" || protocol === "http:";
    } catch (e) {
      return false;
    }
  }

  function render(container, decision) {
    container.textContent = "";
    container.setAttribute("data-rekindle-fallback", decision.fallback ? "true" : "false");
    (decision.tiles || []).forEach(function (tile) {
      if (!safeLink(tile.link) || (tile.image && !safeLink(tile.image))) return;
      tile.fallback = decision.fallback;
      var a = document.createElement("a");
      a.className = "rekindle-tile";
      a.href = tile.link;
      a.setAttribute("data-offer-id", tile.offer_id);
      a.setAttribute("data-decision-id", tile.decision_id);
      if (tile.image) {
        var img = document.createElement("img");
        img.src = tile.image;
        img.alt = "";
        a.appendChild(img);
      }
      a.appendChild(text("strong", "rekindle-title", tile.title));
      if (tile.body) a.appendChild(text("span", "rekindle-body", tile.body));
      if (tile.voucher) a.appendChild(text("code", "rekindle-voucher", tile.voucher));
      a.__rekindle = { tile: tile, slot: decision.slot };
      a.addEventListener("click", function () { track("Promo Clicked", tile, decision.slot); });
      container.appendChild(a);
      if (observer) observer.observe(a); else track("Promo Viewed", tile, decision.slot);
    });
    container.dispatchEvent(new CustomEvent("rekindle:rendered", { bubbles: true, detail: decision }));
  }

  function refresh() {
    var containers = Array.prototype.slice.call(document.querySelectorAll("[data-rekindle-slot]"));
    var slots = [];
    containers.forEach(function (c) {
      var slot = c.getAttribute("data-rekindle-slot");
      if (slots.indexOf(slot) < 0) slots.push(slot);
    });
    if (!slots.length) return Promise.resolve();
    var body = {
      slots: slots, writeKey: writeKey, userId: visitor.userId, userHash: visitor.userHash,
      anonymousId: visitor.anonymousId, token: storedToken(), url: location.href
    };
    function decisions(response) { return response.ok ? response.json() : { decisions: [] }; }
    return send("/v1/tiles", body, false, edge)
      .then(keepToken)
      .then(decisions)
      .then(function (answer) {
        // The edge marks an answer stale when the token predates the catalog it decides
        // from: the origin then answers, once, with a fresh token for the next page.
        var stale = edge && (answer.decisions || []).some(function (d) { return d.stale; });
        if (!stale) return answer;
        // The edge's answer stands when the origin cannot be reached or will not answer;
        // a token the origin does not renew (an erased person) is dropped.
        return send("/v1/tiles", body, false).then(function (response) {
          if (!response.ok) return answer;
          if (!response.headers.get("x-rekindle-token")) forgetToken();
          return keepToken(response).json();
        }).catch(function () { return answer; });
      })
      .then(function (answer) {
        (answer.decisions || []).forEach(function (decision) {
          containers.forEach(function (c) {
            if (c.getAttribute("data-rekindle-slot") === decision.slot) render(c, decision);
          });
        });
      })
      // The page keeps whatever it shows without tiles: a failed decision is never an error.
      .catch(function () {});
  }


  window.rekindle = {
    refresh: refresh,
    identify: function (userId, userHash) {
      if (userId !== visitor.userId) forgetToken();
      visitor.userId = userId;
      visitor.userHash = userHash || null;
      return refresh();
    },
    reset: function () {
      forgetToken();
      visitor.userId = null;
      visitor.userHash = null;
      return refresh();
    }
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", refresh); else refresh();
})();
