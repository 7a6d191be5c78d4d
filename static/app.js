// leadcrm's only script besides htmx. No inline scripts anywhere.
document.addEventListener("DOMContentLoaded", function () {
  // Every htmx request carries the CSRF token (the forms also carry it, for use without JavaScript).
  var token = document.querySelector('meta[name="csrf-token"]').content;
  document.body.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRFToken"] = token;
  });
  // A 422 is a form with its errors: swap it in like a success. Other errors are not swapped.
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "422", swap: true, error: false },
    { code: "[45]..", swap: false, error: true },
  ];
});
