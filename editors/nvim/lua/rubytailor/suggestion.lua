-- One streamed suggestion at a time: request it with rubytailor/inlineStream, grow it
-- from rubytailor/partial deltas, show it as ghost text, accept or drop it.
--
-- A suggestion belongs to the exact place it was asked for (buffer, changedtick, cursor).
-- Anything that moves away from that place cancels the request and hides the text;
-- typing the suggestion's own next characters keeps it ("type-through").
--
-- The server is told what became of each suggestion it identified (suggestion_id):
-- shown, partly accepted (a line), accepted, or dismissed (hidden unaccepted).

local compat = require("rubytailor.compat")
local ghost = require("rubytailor.ghost")

local M = {}

local STREAM_METHOD = "rubytailor/inlineStream"
local SHOW_METHOD = "textDocument/didShowCompletion"
local PARTIAL_ACCEPT_METHOD = "textDocument/didPartiallyAcceptCompletion"
local DISMISS_METHOD = "rubytailor/didDismissCompletion"
local PREWARM_METHOD = "rubytailor/prewarm"
local ACCEPT_COMMAND = "rubytailor.didAcceptCompletion"
local REQUEST_CANCELLED = -32800 -- LSP ErrorCodes.RequestCancelled

---@class rubytailor.State
---@field id integer             our stream id, echoed in every partial and the result
---@field client vim.lsp.Client
---@field request_id integer|nil LSP request id while the request is in flight
---@field buf integer
---@field row integer            0-based anchor: where the suggestion starts
---@field col integer            byte column of the anchor
---@field tick integer           b:changedtick the suggestion was computed for
---@field text string            suggestion text so far (the final text once done)
---@field seq integer            last partial applied
---@field done boolean
---@field absorbing boolean      a keystroke or accepted line is landing in the buffer
---@field suggestion_id string|nil  the server's id for it (from a partial or the result)
---@field shown boolean          didShowCompletion was sent
---@field taken integer          characters of the suggestion already in the buffer

---@type rubytailor.State|nil
local state = nil
local next_id = 0

---@type rubytailor.Config
local config

---@param cfg rubytailor.Config
function M.configure(cfg)
  config = cfg
end

local function cursor()
  local pos = vim.api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

local function cancel_request(s)
  if s.request_id ~= nil then
    local id = s.request_id
    s.request_id = nil
    compat.cancel_request(s.client, id)
  end
end

-- Drop the suggestion, with no event: it was accepted, or never shown.
local function drop()
  if state then
    cancel_request(state)
  end
  state = nil
  ghost.clear()
end

local function notify(s, method, params)
  if s.suggestion_id then
    params.suggestion_id = s.suggestion_id
    compat.notify(s.client, method, params)
  end
end

---Hide the suggestion and cancel its request; the server hears it was dismissed when
---it had been shown.
function M.dismiss()
  local s = state
  drop()
  if s and s.shown then
    notify(s, DISMISS_METHOD, {})
  end
end

---Is the suggestion still for what is on screen?
---@param s rubytailor.State
local function current(s)
  if state ~= s or not vim.api.nvim_buf_is_valid(s.buf) then
    return false
  end
  if vim.api.nvim_get_current_buf() ~= s.buf or vim.api.nvim_buf_get_changedtick(s.buf) ~= s.tick then
    return false
  end
  local row, col = cursor()
  return row == s.row and col == s.col
end

-- Like current(), but while keystrokes are being absorbed: typeahead ("ta" typed fast)
-- reaches InsertCharPre again before TextChangedI has confirmed the first character.
local function at_anchor(s)
  if not s.absorbing then
    return current(s)
  end
  if state ~= s or vim.api.nvim_get_current_buf() ~= s.buf then
    return false
  end
  local row, col = cursor()
  return row == s.row and col == s.col
end

-- Once per suggestion, as soon as both its text is on screen and its id is known.
local function report_shown(s)
  if not s.shown and s.suggestion_id and ghost.visible() then
    s.shown = true
    notify(s, SHOW_METHOD, {})
  end
end

local function render(s)
  if s.text == "" then
    ghost.clear()
    return
  end
  ghost.show(s.buf, s.row, s.col, s.text, config.hl_group)
  report_shown(s)
end

-- Partials carry the id from their first text on, the result always (with text).
local function take_id(s, params)
  if type(params.suggestion_id) == "string" and params.suggestion_id ~= "" then
    s.suggestion_id = params.suggestion_id
  end
end

---Handler for the rubytailor/partial notification: {id, seq, text, done}.
function M.on_partial(_, params)
  local s = state
  if not params or not s or params.id ~= s.id or s.done then
    return
  end
  if type(params.seq) == "number" then
    if params.seq <= s.seq then
      return -- a duplicate; deltas must be applied once
    end
    s.seq = params.seq
  end
  if not current(s) then
    M.dismiss()
    return
  end
  take_id(s, params)
  s.text = s.text .. (params.text or "")
  if params.done then
    s.done = true
  end
  render(s)
end

---Ask for a suggestion at the cursor. Replaces (and cancels) any earlier one.
---@param buf integer
function M.request(buf)
  M.dismiss()
  if vim.api.nvim_get_current_buf() ~= buf or not vim.api.nvim_get_mode().mode:match("^i") then
    return
  end
  local client = compat.get_clients({ bufnr = buf, name = "rubytailor" })[1]
  if not client then
    return
  end
  local row, col = cursor()
  next_id = next_id + 1
  ---@type rubytailor.State
  local s = {
    id = next_id,
    client = client,
    buf = buf,
    row = row,
    col = col,
    tick = vim.api.nvim_buf_get_changedtick(buf),
    text = "",
    seq = -1,
    done = false,
    absorbing = false,
    shown = false,
    taken = 0,
  }
  -- Positions in the encoding the server negotiated (utf-8 on Neovim 0.11, else utf-16).
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.id = s.id

  local function on_result(err, result)
    if state ~= s then
      return
    end
    s.request_id = nil
    if err then
      if err.code ~= REQUEST_CANCELLED then
        vim.lsp.log.warn("rubytailor/inlineStream failed:", err)
      end
      M.dismiss()
      return
    end
    if type(result) == "table" then
      take_id(s, result)
    end
    if s.done then
      -- The final partial came first (the server sends it before the response): the
      -- text is complete, and what the user did since (typed through it, accepted a
      -- line) has changed it; the result's full text must not undo that.
      report_shown(s)
      return
    end
    if not current(s) then
      M.dismiss()
      return
    end
    -- The result's text is the final suggestion (the concatenated deltas).
    if result and type(result.text) == "string" then
      s.text = result.text
    end
    s.done = true
    render(s)
  end

  local ok, request_id = compat.request(client, STREAM_METHOD, params, on_result, buf)
  if ok then
    s.request_id = request_id
    state = s
  end
end

---@return boolean
---Tell the server where the cursor rests, so the first suggestion there starts warm (it
---waits until the editor is idle; any request or edit goes first).
---@param buf integer
function M.prewarm(buf)
  local client = compat.get_clients({ bufnr = buf, name = "rubytailor" })[1]
  if client and vim.api.nvim_get_current_buf() == buf then
    local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
    compat.notify(client, PREWARM_METHOD, params)
  end
end

function M.visible()
  return state ~= nil and ghost.visible()
end

-- Wait (processing events) for a streaming suggestion to finish; true when it did.
local function wait_done(s)
  if s.done then
    return true
  end
  vim.wait(config.accept_timeout_ms, function()
    return state ~= s or s.done
  end, 5)
  return state == s and s.done
end

-- Insert `text` at the anchor and move the cursor to its end.
local function insert(s, text)
  local lines = vim.split(text, "\n", { plain = true })
  vim.api.nvim_buf_set_text(s.buf, s.row, s.col, s.row, s.col, lines)
  local end_row = s.row + #lines - 1
  local end_col = #lines == 1 and s.col + #lines[1] or #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { end_row + 1, end_col })
  return end_row, end_col
end

---Insert the whole (final) suggestion. Returns false when there was nothing to accept.
---@return boolean
function M.accept()
  local s = state
  if not s or not current(s) or not wait_done(s) or not current(s) or s.text == "" then
    return false
  end
  drop()
  insert(s, s.text)
  if s.suggestion_id then
    -- The command an inline completion item would carry; the server answers null.
    local params = { command = ACCEPT_COMMAND, arguments = { { suggestion_id = s.suggestion_id } } }
    compat.request(s.client, "workspace/executeCommand", params, function() end, s.buf)
  end
  return true
end

---Insert the suggestion up to and including its first newline; keep showing the rest.
---@return boolean
function M.accept_line()
  local s = state
  if not s or not current(s) or not wait_done(s) or not current(s) or s.text == "" then
    return false
  end
  local newline = s.text:find("\n", 1, true)
  if not newline or newline == #s.text then
    return M.accept()
  end
  ghost.clear()
  local line = s.text:sub(1, newline)
  s.row, s.col = insert(s, line)
  s.text = s.text:sub(newline + 1)
  -- Counted from the suggestion's start, in characters, typed-through ones included.
  s.taken = s.taken + vim.fn.strchars(line)
  notify(s, PARTIAL_ACCEPT_METHOD, { acceptedLength = s.taken })
  s.absorbing = true -- the TextChangedI this edit causes must not ask for a new one
  s.tick = vim.api.nvim_buf_get_changedtick(s.buf)
  render(s)
  return true
end

---InsertCharPre: the user typed `char`. Keep the suggestion when it starts with it.
---@param char string
function M.on_char(char)
  local s = state
  if s and s.done and at_anchor(s) and char ~= "" and vim.startswith(s.text, char) and #s.text > #char then
    s.text = s.text:sub(#char + 1)
    s.taken = s.taken + vim.fn.strchars(char)
    -- Drawn at the old anchor: the character lands there right after this event and
    -- pushes the mark along, so the preview never shows the typed character twice.
    ghost.show(s.buf, s.row, s.col, s.text, config.hl_group)
    s.col = s.col + #char
    -- TextChangedI confirms the character arrived where expected.
    s.absorbing = true
    return
  end
  M.dismiss()
end

---TextChangedI: true when this change was absorbed by the suggestion (no new request).
---@param buf integer
---@return boolean
function M.absorbed(buf)
  local s = state
  if not s or not s.absorbing then
    return false
  end
  s.absorbing = false
  local row, col = cursor()
  if buf == s.buf and row == s.row and col == s.col then
    s.tick = vim.api.nvim_buf_get_changedtick(buf)
    render(s)
    return true
  end
  M.dismiss()
  return false
end

---CursorMovedI: drop the suggestion when the cursor left its anchor.
function M.on_cursor_moved()
  local s = state
  -- While a keystroke is being absorbed the cursor moves with it; TextChangedI decides.
  if s and not s.absorbing and not current(s) then
    M.dismiss()
  end
end

return M
