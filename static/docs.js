// Starts Swagger UI on /docs with our own OpenAPI document (no inline script).
// "Authorize" takes an API token. Without one, calls go with the supervisor's
// browser session, which needs the page's CSRF token on writes.
(function () {
  var root = document.getElementById("swagger-ui");
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    requestInterceptor: function (request) {
      request.headers["X-CSRFToken"] = csrf;
      return request;
    },
  });
})();
