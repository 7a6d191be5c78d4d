// leadcrm's only script besides htmx. No inline scripts anywhere.
// htmx itself is configured in base.html's htmx-config meta tag (no eval, no inline styles).
document.addEventListener("DOMContentLoaded", function () {
  // Every htmx request carries the CSRF token (the forms also carry it, for use without JavaScript).
  var token = document.querySelector('meta[name="csrf-token"]').content;
  document.body.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRFToken"] = token;
  });
  setUpInbox();
  setUpCountdowns();
});

// The operator's inbox (templates/inbox/index.html): the title's count, the announcement of new
// contacts (a beep, a browser notification; each chosen per browser), focus after a close.
function setUpInbox() {
  var section = document.getElementById("inbox");
  if (!section || !section.hasAttribute("data-open-count")) {
    return;
  }
  var titleSuffix = document.title.indexOf(" · ") >= 0 ? document.title.slice(document.title.indexOf(" · ")) : "";
  var seen = contactIds(section);
  var closedTodayOpen = false;
  var focusAfterClose = null;
  var closingForm = null;
  var takingForm = null;
  var takingId = null;
  var message = document.getElementById("announce-message");

  var boxes = {
    sound: document.getElementById("announce-sound"),
    notification: document.getElementById("announce-notification"),
  };
  Object.keys(boxes).forEach(function (kind) {
    var box = boxes[kind];
    if (!box) {
      return;
    }
    box.checked = localStorage.getItem("leadcrm.announce." + kind) === "on";
    if (kind === "notification" && box.checked && !("Notification" in window && Notification.permission === "granted")) {
      box.checked = false;
    }
    box.addEventListener("change", function () {
      if (kind === "notification" && box.checked) {
        askNotificationPermission(box);
      } else {
        remember(kind, box.checked);
        if (kind === "sound" && box.checked) {
          beep(); // a sample, and the click lets the browser start the sound at all (autoplay rules)
        }
      }
    });
  });

  function remember(kind, on) {
    localStorage.setItem("leadcrm.announce." + kind, on ? "on" : "off");
  }

  function say(key) {
    if (message) {
      message.textContent = message.getAttribute("data-" + key);
      message.hidden = false;
    }
  }

  // Asked only now, when the operator ticks the box.
  function askNotificationPermission(box) {
    if (!("Notification" in window)) {
      box.checked = false;
      say("unsupported");
      return;
    }
    Notification.requestPermission().then(function (permission) {
      if (permission === "granted") {
        remember("notification", true);
        if (message) {
          message.hidden = true;
        }
      } else {
        box.checked = false;
        remember("notification", false);
        say("refused");
      }
    });
  }

  var audio = null;
  // Browsers start sound only after a gesture on the page: the first click or key after a reload
  // (with the box ticked from before) unlocks it for the beeps that follow.
  function unlockSound() {
    var Context = window.AudioContext || window.webkitAudioContext;
    if (boxes.sound && boxes.sound.checked && Context) {
      audio = audio || new Context();
      audio.resume();
    }
    document.removeEventListener("pointerdown", unlockSound, true);
    document.removeEventListener("keydown", unlockSound, true);
  }
  document.addEventListener("pointerdown", unlockSound, true);
  document.addEventListener("keydown", unlockSound, true);
  function beep() {
    var Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) {
      return;
    }
    audio = audio || new Context();
    if (audio.state === "suspended") {
      audio.resume();
    }
    var oscillator = audio.createOscillator();
    var gain = audio.createGain();
    oscillator.type = "sine";
    oscillator.frequency.value = 880;
    gain.gain.value = 0.1;
    oscillator.connect(gain);
    gain.connect(audio.destination);
    oscillator.start();
    oscillator.stop(audio.currentTime + 0.2);
  }

  function announce(rows) {
    if (rows.length === 0) {
      return;
    }
    if (boxes.sound && boxes.sound.checked) {
      beep();
    }
    if (boxes.notification && boxes.notification.checked && "Notification" in window && Notification.permission === "granted") {
      rows.forEach(function (row) {
        new Notification(section.getAttribute("data-title-label"), { body: row.getAttribute("data-lead"), tag: "leadcrm-contact-" + row.getAttribute("data-contact-id") });
      });
    }
  }

  document.addEventListener("toggle", function (event) {
    if (event.target.matches && event.target.matches("#inbox details.closed-today")) {
      closedTodayOpen = event.target.open;
    }
  }, true);

  // A Take in the list: once the list comes back (its message said in the live region above it), focus
  // stays with the contact: its Close once taken, its Take if it could not be; the list if it is gone.
  document.body.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    var button = elt.tagName === "FORM" && elt.closest("#inbox") ? elt.querySelector(".inbox-take") : null;
    if (button) {
      takingForm = elt;
      takingId = button.closest(".inbox-row").getAttribute("data-contact-id");
    }
  });

  // A Close in the list: where focus goes once the list comes back without that row.
  document.body.addEventListener("htmx:beforeRequest", function (event) {
    // Only a row's own form (the poll's section holds Close buttons too).
    var elt = event.detail.elt;
    var button = elt.tagName === "FORM" && elt.closest("#inbox") ? elt.querySelector(".inbox-close") : null;
    if (!button) {
      return;
    }
    closingForm = event.detail.elt;
    var buttons = Array.prototype.slice.call(document.querySelectorAll("#inbox .inbox-close"));
    var at = buttons.indexOf(button);
    focusAfterClose = buttons.slice(at + 1).concat(buttons.slice(0, at).reverse()).map(function (b) { return b.id; });
  });

  document.body.addEventListener("htmx:afterSettle", function (event) {
    var fresh = document.getElementById("inbox");
    if (!fresh || !(event.target === fresh || fresh.contains(event.target))) {
      return;
    }
    section = fresh;
    document.title = "(" + fresh.getAttribute("data-open-count") + ") " + fresh.getAttribute("data-title-label") + titleSuffix;
    var details = fresh.querySelector("details.closed-today");
    if (details && closedTodayOpen) {
      details.open = true;
    }
    var ids = contactIds(fresh);
    announce(Array.prototype.filter.call(fresh.querySelectorAll(".inbox-row"), function (row) {
      return seen.indexOf(row.getAttribute("data-contact-id")) < 0;
    }));
    seen = ids;
    if (takingForm && event.detail.requestConfig && event.detail.requestConfig.elt === takingForm) {
      takingForm = null;
      (document.getElementById("take-" + takingId) || document.getElementById("close-" + takingId) || document.getElementById("inbox-heading")).focus();
    }
    if (focusAfterClose && event.detail.requestConfig && event.detail.requestConfig.elt === closingForm) {
      var candidates = focusAfterClose;
      focusAfterClose = null;
      closingForm = null;
      var next = null;
      for (var i = 0; i < candidates.length && !next; i++) {
        next = document.getElementById(candidates[i]);
      }
      (next || document.getElementById("inbox-heading")).focus();
    }
  });
}

function contactIds(section) {
  return Array.prototype.map.call(section.querySelectorAll(".inbox-row"), function (row) {
    return row.getAttribute("data-contact-id");
  });
}

// Countdowns (an offer's time left in the inbox): the server writes the milliseconds left when it sent
// the element (data-milliseconds-left); they are counted down here from the moment the element appeared,
// so the browser's own clock does not matter, and shown in whole seconds rounded up, as the server shows
// them. At zero the element says the time ran out. Each element swapped in by htmx (the inbox polls)
// starts again from the server's fresh count, which agrees with this one to the latency of the answer.
function setUpCountdowns() {
  var appeared = new WeakMap();
  function note(root) {
    var now = performance.now();
    var found = root.querySelectorAll ? root.querySelectorAll("time[data-milliseconds-left]") : [];
    Array.prototype.forEach.call(found, function (element) {
      if (!appeared.has(element)) {
        appeared.set(element, now);
      }
    });
  }
  function tick() {
    var now = performance.now();
    note(document);
    Array.prototype.forEach.call(document.querySelectorAll("time[data-milliseconds-left]"), function (element) {
      var total = parseInt(element.getAttribute("data-milliseconds-left"), 10) || 0;
      var left = Math.max(0, Math.ceil((total - (now - appeared.get(element))) / 1000));
      var text = left > 0
        ? element.getAttribute("data-left-text").replace("{time}", countdown(left))
        : element.getAttribute("data-ran-out-text");
      if (element.textContent !== text) {
        element.textContent = text;
      }
      element.classList.toggle("ran-out", left === 0);
    });
  }
  document.body.addEventListener("htmx:load", function (event) {
    note(event.detail.elt);
  });
  tick();
  // Ten times a second: each second shown changes within a tenth of a second of when it should.
  setInterval(tick, 100);
}

// Seconds as leadcrm.web.ages.format_countdown writes them: 0:28, 4:05, 1:00:00.
function countdown(seconds) {
  var hours = Math.floor(seconds / 3600);
  var minutes = Math.floor((seconds % 3600) / 60);
  var rest = seconds % 60;
  var mm = hours ? (minutes < 10 ? "0" : "") + minutes : String(minutes);
  return (hours ? hours + ":" : "") + mm + ":" + (rest < 10 ? "0" : "") + rest;
}
