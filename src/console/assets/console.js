// webhookd console: the few things a page does better with script. Every action works without
// it: forms post, and an unconfirmed destructive post answers with a confirmation page.
"use strict";

// Copy: a button with data-copy="ID" copies the value of the element with that id.
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy]");
  if (!button) return;
  var field = document.getElementById(button.dataset.copy);
  if (!field) return;
  var done = function () {
    button.textContent = "Copied";
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(done, function () {
      field.select();
    });
  } else {
    field.select();
    if (document.execCommand("copy")) done();
  }
});

// Reveal: a password field inside .reveal gets a Show/Hide toggle.
document.querySelectorAll(".reveal input[type=password]").forEach(function (input) {
  var toggle = document.createElement("button");
  toggle.type = "button";
  toggle.textContent = "Show";
  toggle.setAttribute("aria-controls", input.id);
  toggle.setAttribute("aria-pressed", "false");
  toggle.addEventListener("click", function () {
    var shown = input.type === "text";
    input.type = shown ? "password" : "text";
    toggle.textContent = shown ? "Show" : "Hide";
    toggle.setAttribute("aria-pressed", String(!shown));
  });
  input.parentNode.appendChild(toggle);
});

// Confirmation: a form (or its submit button) with data-confirm asks in a dialog first, then
// posts with confirmed=yes, which skips the server's confirmation page.
var dialog = null;
function ask(question, yes, then) {
  if (!dialog) {
    dialog = document.createElement("dialog");
    dialog.id = "confirm-dialog";
    var form = document.createElement("form");
    form.method = "dialog";
    var text = document.createElement("p");
    var actions = document.createElement("div");
    actions.className = "actions";
    var cancel = document.createElement("button");
    cancel.value = "cancel";
    cancel.textContent = "Cancel";
    var ok = document.createElement("button");
    ok.value = "ok";
    ok.id = "confirm-yes";
    ok.className = "danger";
    actions.append(ok, cancel);
    form.append(text, actions);
    dialog.append(form);
    document.body.append(dialog);
  }
  dialog.querySelector("p").textContent = question;
  dialog.querySelector("#confirm-yes").textContent = yes;
  dialog.returnValue = "";
  dialog.onclose = function () {
    if (dialog.returnValue === "ok") then();
  };
  dialog.showModal();
  dialog.querySelector("button[value=cancel]").focus();
}

document.addEventListener("submit", function (event) {
  var form = event.target;
  var submitter = event.submitter;
  var question = (submitter && submitter.dataset.confirm) || form.dataset.confirm;
  if (!question || form.dataset.confirmed === "yes" || form.method === "dialog") return;
  event.preventDefault();
  ask(question, submitter ? submitter.textContent : "Yes", function () {
    var field = document.createElement("input");
    field.type = "hidden";
    field.name = "confirmed";
    field.value = "yes";
    form.append(field);
    form.dataset.confirmed = "yes";
    form.requestSubmit(submitter || undefined);
  });
});
