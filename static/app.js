// leadcrm's only script besides htmx. No inline scripts anywhere.
// htmx itself is configured in base.html's htmx-config meta tag (no eval, no inline styles).
document.addEventListener("DOMContentLoaded", function () {
  // Every htmx request carries the CSRF token (the forms also carry it, for use without JavaScript).
  var token = document.querySelector('meta[name="csrf-token"]').content;
  document.body.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRFToken"] = token;
  });
});
