// Starts Swagger UI on this service's own OpenAPI document (a file, not inline: the CSP forbids inline script).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  tryItOutEnabled: true,
});
