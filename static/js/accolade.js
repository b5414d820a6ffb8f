/* Accolade page behaviour: toasts (dismissal, their timer), focus after a form
 * swap, live-connection status, reconnects.
 * No inline scripts anywhere, so a strict content security policy can allow
 * only the vendored files. */
(function () {
  "use strict";

  var MAX_TOASTS = 4;
  var MAX_TOASTS_PHONE = 2;

  // Day and streak rules count in the user's own time zone; the sign-up form
  // asks the browser for it.
  document.addEventListener("DOMContentLoaded", function () {
    var field = document.querySelector('input[type="hidden"][name="time_zone"]');
    if (field && !field.value && window.Intl) {
      field.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
    }
  });

  // Where focus was before it went into a toast: it goes back there when the
  // toast closes, rather than falling to <body>.
  var focusBeforeToast = null;
  document.addEventListener("focusin", function (event) {
    if (!event.target.closest || !event.target.closest("#toasts")) focusBeforeToast = event.target;
  });

  function dismiss(toast) {
    if (!toast || toast.classList.contains("is-leaving")) return;
    var hadFocus = toast.contains(document.activeElement);
    toast.classList.add("is-leaving");
    window.setTimeout(function () {
      // Still in the toast (the user did not move on meanwhile): give it back.
      hadFocus = hadFocus && toast.contains(document.activeElement);
      toast.remove();
      if (!hadFocus) return;
      var back = focusBeforeToast && document.body.contains(focusBeforeToast) ?
        focusBeforeToast : document.getElementById("main");
      if (back) back.focus();
    }, 200);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-dismiss-toast]");
    if (button) dismiss(button.closest("[data-toast]"));
  });

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    var toasts = document.querySelectorAll("#toasts [data-toast]:not(.is-leaving)");
    if (toasts.length) dismiss(toasts[toasts.length - 1]);
  });

  // A toast goes by itself after a few seconds (#toasts' data-toast-seconds),
  // but never while the pointer is over it or focus is in it: the time left
  // waits, so someone reading it or tabbing to its link is not cut short.
  function toastSeconds() {
    var region = document.getElementById("toasts");
    var seconds = region ? parseFloat(region.getAttribute("data-toast-seconds")) : NaN;
    return isNaN(seconds) ? 8 : seconds;
  }

  function startTimer(toast) {
    if (toast.hasAttribute("data-timed")) return;
    toast.setAttribute("data-timed", "");
    var left = toastSeconds() * 1000;
    var since = 0;
    var handle = null;
    function run() {
      since = Date.now();
      handle = window.setTimeout(function () { dismiss(toast); }, left);
    }
    function pause() {
      if (handle === null) return;
      window.clearTimeout(handle);
      handle = null;
      left -= Date.now() - since;
    }
    function resume() {
      if (handle !== null || toast.matches(":hover") || toast.contains(document.activeElement)) return;
      run();
    }
    toast.addEventListener("mouseenter", pause);
    toast.addEventListener("mouseleave", resume);
    toast.addEventListener("focusin", pause);
    // After focusout the focus has not moved yet: look once it has.
    toast.addEventListener("focusout", function () { window.setTimeout(resume, 0); });
    if (left > 0) run();
  }

  function startTimers() {
    document.querySelectorAll("#toasts [data-toast]:not([data-timed])").forEach(startTimer);
  }

  document.addEventListener("DOMContentLoaded", startTimers);

  // A form swapped in by htmx replaces the element that had focus, which
  // then falls to <body>: a keyboard user would start again from the top.
  // Focus goes back where it was (the same control of the new form), or to
  // the first field the server marked invalid.
  var FOCUSABLE = "a[href], button, input:not([type=hidden]), select, textarea";
  var refocus = null;

  document.addEventListener("htmx:beforeRequest", function (event) {
    var target = event.detail && event.detail.target;
    var active = document.activeElement;
    refocus = null;
    if (!target || !target.id || !active || !target.contains(active)) return;
    var controls = Array.prototype.slice.call(target.querySelectorAll(FOCUSABLE));
    refocus = { id: target.id, index: controls.indexOf(active) };
  });

  document.addEventListener("htmx:afterSettle", function (event) {
    // Only the swap of the request's own target (a pushed card settles too).
    var settled = event.detail && event.detail.target;
    if (!refocus || !settled || settled.id !== refocus.id) return;
    var wanted = refocus;
    refocus = null;
    var active = document.activeElement;
    if (active && active !== document.body) return;
    var scope = document.getElementById(wanted.id);
    if (!scope) return;
    var next = scope.querySelector('[aria-invalid="true"]') ||
      scope.querySelectorAll(FOCUSABLE)[wanted.index];
    if (next) next.focus();
  });

  // The words come from the page (data-open, data-offline ...), in its language.
  function setLiveState(state, text, word) {
    var status = document.getElementById("live-status");
    if (!status) return;
    status.dataset.state = state;
    status.querySelector(".live-text").textContent = status.getAttribute("data-" + word) || text;
  }

  var cleanCloseRetries = 0;

  document.addEventListener("htmx:wsOpen", function () {
    cleanCloseRetries = 0;
    setLiveState("open", "Live", "open");
  });

  document.addEventListener("htmx:wsClose", function (event) {
    var code = event.detail && event.detail.event && event.detail.event.code;
    if (code === 4401) {
      // The session ended: reconnecting cannot help until the user signs in.
      setLiveState("closed", "Signed out", "signed-out");
      return;
    }
    // 4429: this browser has too many live pages open; try again later, when
    // another may have closed.
    if (code === 4429) { setLiveState("closed", "Paused: too many open pages", "paused"); }
    else { setLiveState("closed", "Reconnecting…", "reconnecting"); }
    // The ws extension retries only after abnormal closes (1006, 1011-1013).
    // A clean close, as when the server restarts for a deploy, would leave the
    // page silently offline, so reconnect by re-initialising the element.
    // 4000: the session changed under the socket (a new key, a check that
    // failed); reconnecting with the cookie the browser has now tells.
    if (code === 1000 || code === 1001 || code === 4000 || code === 4429) {
      var element = event.detail.elt || document.getElementById("live");
      // Back off (1 s, 2 s, 4 s ... up to a minute, with jitter) so a server
      // that keeps closing is not hammered.
      var delay = code === 4000 ? 200 : Math.min(60000, 1000 * Math.pow(2, cleanCloseRetries++));
      window.setTimeout(function () {
        if (!document.body.contains(element)) return;
        var fresh = element.cloneNode(true);
        element.replaceWith(fresh);
        window.htmx.process(fresh);
      }, delay * (0.5 + Math.random()));
    }
  });

  document.addEventListener("htmx:wsError", function () { setLiveState("closed", "Offline", "offline"); });

  // Each tab shows an unlock's toast once, and the toast that says an earning
  // ended (badges that announce endings). The server sends every one no page
  // has acknowledged whenever a socket (re)connects, and a live push can cross
  // that catch-up, so a toast this tab already showed is taken out of the
  // incoming fragment before it is swapped in; sessionStorage is per tab and
  // survives reloads of it. Every one that arrives is acknowledged back,
  // shown or not, so the server stops offering it.
  var KINDS = [
    { attribute: "data-unlock-id", storage: "accolade.shownUnlocks", field: "seen" },
    { attribute: "data-ending-id", storage: "accolade.shownEndings", field: "ended_seen" }
  ];
  var pendingAcknowledgements = { seen: [], ended_seen: [] };

  function shownIds(kind) {
    try { return JSON.parse(window.sessionStorage.getItem(kind.storage) || "[]"); }
    catch (error) { return []; }
  }

  function rememberShown(kind, ids) {
    try {
      window.sessionStorage.setItem(kind.storage, JSON.stringify(ids.slice(-200)));
    } catch (error) { /* storage full or disabled: duplicates become possible, nothing worse */ }
  }

  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    var detail = event.detail;
    if (!detail || !detail.target || detail.target.id !== "toasts" || !detail.fragment) return;
    KINDS.forEach(function (kind) {
      var shown = shownIds(kind);
      detail.fragment.querySelectorAll("[" + kind.attribute + "]").forEach(function (toast) {
        var id = parseInt(toast.getAttribute(kind.attribute), 10);
        pendingAcknowledgements[kind.field].push(id);
        if (shown.indexOf(id) !== -1) { toast.remove(); } else { shown.push(id); }
      });
      rememberShown(kind, shown);
    });
  });

  // A card pushed with a new earning (unlocked, a tier reached, earned again)
  // while the page is open celebrates: a brief glow and a burst around its
  // icon. Nothing moves for someone who asked for less motion, in the system
  // or in their settings (body[data-motion="reduced"]).
  var celebrating = [];
  var earnedChange = 0;

  function wantsMotion() {
    if (document.body.getAttribute("data-motion") === "reduced") return false;
    return !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  }

  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    var detail = event.detail;
    var old = detail && detail.target;
    if (!old || !old.classList || !old.classList.contains("badge-card") || !detail.fragment) return;
    var incoming = detail.fragment.querySelector("#" + CSS.escape(old.id));
    if (!incoming) return;
    earnedChange += (incoming.classList.contains("is-earned") ? 1 : 0) -
      (old.classList.contains("is-earned") ? 1 : 0);
    if (!incoming.classList.contains("is-earned")) return;
    if (incoming.getAttribute("data-milestone") === old.getAttribute("data-milestone")) return;
    if (wantsMotion()) celebrating.push(old.id);
  });

  // A pushed card the page does not list (it shows only some badges) may
  // belong in the list now: fetch the list again, once for a burst of them.
  var relist = null;
  document.addEventListener("htmx:oobErrorNoTarget", function (event) {
    var content = event.detail && event.detail.content;
    var filters = document.querySelector(".badge-filters");
    if (!content || !content.classList || !content.classList.contains("badge-card") || !filters) return;
    window.clearTimeout(relist);
    // Quietly: the address stays, and the status does not announce a list the user
    // did not ask for (the view leaves it out for ?relist=1).
    relist = window.setTimeout(function () {
      var url = window.location.pathname + window.location.search;
      url += (window.location.search ? "&" : "?") + "relist=1";
      window.htmx.ajax("GET", url, { target: "#badge-lists", swap: "outerHTML" });
    }, 250);
  });

  // After the frame has settled (htmx puts each swapped card's own classes back then).
  function celebrate() {
    var ids = celebrating;
    celebrating = [];
    ids.forEach(function (id) {
      var card = document.getElementById(id);
      if (!card) return;
      card.classList.add("is-celebrating");
      window.setTimeout(function () { card.classList.remove("is-celebrating"); }, 1600);
    });
  }

  // A pushed card replaces the page's copy, earned or not; the badge page's
  // count of earned badges moves with the cards that changed (the page may
  // list only some of them).
  function refreshEarnedCount() {
    var count = document.getElementById("earned-count");
    var change = earnedChange;
    earnedChange = 0;
    if (!count || !change) return;
    count.textContent = String(Math.max(0, (parseInt(count.textContent, 10) || 0) + change));
  }

  document.addEventListener("htmx:wsAfterMessage", function (event) {
    refreshEarnedCount();
    celebrate();
    var pending = pendingAcknowledgements;
    if (!pending.seen.length && !pending.ended_seen.length) return;
    if (!event.detail || !event.detail.socketWrapper) return;
    var message = {};
    if (pending.seen.length) message.seen = pending.seen;
    if (pending.ended_seen.length) message.ended_seen = pending.ended_seen;
    event.detail.socketWrapper.send(JSON.stringify(message));
    pendingAcknowledgements = { seen: [], ended_seen: [] };
  });

  // Keep the stack short (shorter on a phone, where it covers the page's
  // controls): the oldest toast goes when a new one would overflow.
  document.addEventListener("htmx:oobAfterSwap", function (event) {
    if (!event.detail || !event.detail.target || event.detail.target.id !== "toasts") return;
    var most = window.matchMedia("(max-width: 760px)").matches ? MAX_TOASTS_PHONE : MAX_TOASTS;
    var toasts = event.detail.target.querySelectorAll("[data-toast]:not(.is-leaving)");
    for (var i = 0; i < toasts.length - most; i++) dismiss(toasts[i]);
    startTimers();
  });
})();
