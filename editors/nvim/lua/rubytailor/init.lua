-- rubytailor for Neovim (>= 0.7.2): starts `rubytailor serve` for Ruby buffers and
-- streams its suggestions as ghost text (or, on 0.12 with native_inline_completion,
-- leaves the display to vim.lsp.inline_completion).
--
--   require("rubytailor").setup({
--     cmd = { "rubytailor", "serve" },
--     settings = { backend = "auto", maxLines = 8 },
--   })
--
-- :RubytailorPersonalize and :RubytailorPersonalization{Pause,Resume,Rollback,Status}
-- run the server's personalization commands and echo their answers.

local compat = require("rubytailor.compat")
local suggestion = require("rubytailor.suggestion")
local ghost = require("rubytailor.ghost")

local M = {}

---@type rubytailor.Config|nil
M.config = nil
-- Suggestions through vim.lsp.inline_completion (0.12+) instead of the plugin's stream.
M.native = false

-- The server's personalization commands (workspace/executeCommand) as user commands.
local COMMANDS = {
  RubytailorPersonalize = "rubytailor.personalize",
  RubytailorPersonalizationPause = "rubytailor.personalization.pause",
  RubytailorPersonalizationResume = "rubytailor.personalization.resume",
  RubytailorPersonalizationRollback = "rubytailor.personalization.rollback",
  RubytailorPersonalizationStatus = "rubytailor.personalization.status",
  -- This project's acceptance figures from the events file (as `rubytailor stats`).
  RubytailorStats = "rubytailor.stats",
}

local group = nil ---@type integer|nil
-- Bumped by every setup(), which clears the autocmds: buffers then need wiring again.
local generation = 0
local debounce = nil ---@type uv.uv_timer_t|nil
local uv = compat.uv

local function streaming_on()
  return M.config ~= nil and M.config.ghost_text and not M.native
end

---Accept the visible suggestion. Returns false when there is none (nothing happens),
---so your own mapping can fall back: `if not require("rubytailor").accept() then ... end`.
---@return boolean
function M.accept()
  if M.native then
    return vim.lsp.inline_completion.get()
  end
  return suggestion.accept()
end

---Accept the suggestion's first line (through its newline); the rest stays visible.
---@return boolean
function M.accept_line()
  return suggestion.accept_line()
end

function M.dismiss()
  suggestion.dismiss()
end

---@return boolean
function M.visible()
  return suggestion.visible()
end

---Ask for a suggestion at the cursor now (insert mode), without waiting for a keystroke.
function M.request()
  suggestion.request(vim.api.nvim_get_current_buf())
end

---Turn suggestions (ghost text, or native inline completion) on or off; the language
---server keeps running.
---@param on boolean|nil  nil toggles
function M.toggle(on)
  if not M.config then
    return
  end
  if on == nil then
    on = not M.config.ghost_text
  end
  M.config.ghost_text = on
  if not on then
    suggestion.dismiss()
  end
  if M.native then
    for _, client in ipairs(compat.get_clients({ name = "rubytailor" })) do
      for buf in pairs(client.attached_buffers) do
        vim.lsp.inline_completion.enable(on, { bufnr = buf })
      end
    end
  end
end

-- The status in one line, for the status command (which answers no message).
local function describe_personalization(p)
  if type(p) ~= "table" then
    return "personalization: ?"
  end
  if p.state == "off" then
    local reason = type(p.reason) == "string" and p.reason ~= "" and (" (" .. p.reason .. ")")
    return "personalization: off" .. (reason or "")
  end
  local adapter = type(p.adapter) == "string" and ("adapter " .. p.adapter) or "no adapter yet"
  -- why_not is empty exactly when a run is due.
  local why = type(p.scheduler) == "table" and p.scheduler.why_not
  why = type(why) == "string" and why ~= "" and why or "a run is due"
  local text = ("personalization: %s; %s"):format(adapter, why)
  if type(p.last_message) == "string" and p.last_message ~= "" then
    text = text .. "; last run: " .. p.last_message
  end
  return text
end

---Run one of the server's commands (workspace/executeCommand) and show its answer.
---@param command string  e.g. "rubytailor.personalization.status"
function M.execute(command)
  local buf = vim.api.nvim_get_current_buf()
  -- The current buffer's server, else any (there is one per project root).
  local client = compat.get_clients({ bufnr = buf, name = "rubytailor" })[1]
    or compat.get_clients({ name = "rubytailor" })[1]
  if not client then
    vim.notify("rubytailor: the server is not running", vim.log.levels.WARN)
    return
  end
  local function on_result(err, result)
    if err then
      vim.notify(("rubytailor: %s failed: %s"):format(command, err.message), vim.log.levels.ERROR)
      return
    end
    result = type(result) == "table" and result or {}
    if type(result.text) == "string" then -- rubytailor.stats: a table, shown as it is
      vim.notify(result.text, vim.log.levels.INFO)
      return
    end
    local message = type(result.message) == "string" and result.message ~= "" and result.message
      or describe_personalization(result.status)
    vim.notify("rubytailor: " .. message, vim.log.levels.INFO)
  end
  compat.request(client, "workspace/executeCommand", { command = command }, on_result, buf)
end

local function schedule_request(buf)
  if not debounce then
    debounce = uv.new_timer()
  end
  debounce:stop()
  debounce:start(
    M.config.debounce_ms,
    0,
    vim.schedule_wrap(function()
      if streaming_on() and vim.api.nvim_get_current_buf() == buf then
        suggestion.request(buf)
      end
    end)
  )
end

local function cancel_scheduled()
  if debounce then
    debounce:stop()
  end
end

-- An insert-mode mapping that acts when a suggestion is visible, else types its own key.
local function map_key(buf, lhs, action, desc)
  if not lhs then
    return
  end
  vim.keymap.set("i", lhs, function()
    -- Native inline completion has no visible() to ask: its accept says whether it acted.
    if (M.native or suggestion.visible()) and action() then
      return
    end
    vim.api.nvim_feedkeys(compat.keycode(lhs), "n", false)
  end, { buffer = buf, desc = desc, silent = true })
end

---Wire one buffer: autocmds that drive suggestions, and the keymaps.
---@param buf integer
local function attach_buffer(buf)
  if vim.b[buf].rubytailor_attached == generation then
    return
  end
  vim.b[buf].rubytailor_attached = generation
  local autocmd = function(event, callback)
    vim.api.nvim_create_autocmd(event, { group = group, buffer = buf, callback = callback })
  end
  autocmd("InsertCharPre", function()
    cancel_scheduled()
    suggestion.on_char(vim.v.char)
  end)
  autocmd({ "TextChangedI", "TextChangedP" }, function()
    if not streaming_on() or suggestion.absorbed(buf) then
      return
    end
    schedule_request(buf)
  end)
  autocmd("CursorMovedI", function()
    suggestion.on_cursor_moved()
  end)
  autocmd({ "InsertLeave", "BufLeave" }, function()
    cancel_scheduled()
    suggestion.dismiss()
  end)
  -- The cursor comes to rest (entering insert mode, a pause, another buffer): the
  -- server warms that prompt while the editor is idle (unless its `prewarm` is false).
  autocmd({ "InsertEnter", "CursorHold", "CursorHoldI", "BufEnter" }, function()
    suggestion.prewarm(buf)
  end)

  local keys = M.config.keymaps
  map_key(buf, keys.accept, M.accept, "rubytailor: accept suggestion")
  if M.native then
    -- Native inline completion accepts whole items only and hides them itself.
    vim.lsp.inline_completion.enable(M.config.ghost_text, { bufnr = buf })
    return
  end
  map_key(buf, keys.accept_line, suggestion.accept_line, "rubytailor: accept suggestion line")
  map_key(buf, keys.dismiss, function()
    suggestion.dismiss()
    return true
  end, "rubytailor: dismiss suggestion")
end

-- An empty Lua table would go out as a JSON array; settings are an object.
local function as_object(t)
  return next(t) == nil and vim.empty_dict() or t
end

---Start (or reuse) the server for `buf` and attach it.
---@param buf integer
function M.start(buf)
  local config = M.config
  if not config then
    return
  end
  local path = vim.api.nvim_buf_get_name(buf)
  local root = compat.root(buf, config.root_markers)
  if not root then
    root = path ~= "" and compat.dirname(path) or uv.cwd()
  end
  compat.start({
    name = "rubytailor",
    cmd = config.cmd,
    root_dir = root,
    init_options = as_object(config.settings),
    -- Answers the server's workspace/configuration pulls for the "rubytailor" section.
    settings = { rubytailor = as_object(config.settings) },
    handlers = {
      ["rubytailor/partial"] = suggestion.on_partial,
    },
    on_attach = function(_, attached)
      attach_buffer(attached)
    end,
  }, buf)
end

---@param opts table|nil  see lua/rubytailor/config.lua for every option
function M.setup(opts)
  if vim.fn.has("nvim-0.7.2") == 0 then
    vim.notify("rubytailor needs Neovim 0.7.2 or newer", vim.log.levels.ERROR)
    return
  end
  M.config = require("rubytailor.config").resolve(opts)
  suggestion.configure(M.config)
  M.native = M.config.native_inline_completion and vim.lsp.inline_completion ~= nil
  if M.config.native_inline_completion and not M.native then
    vim.notify(
      "rubytailor: native_inline_completion needs Neovim 0.12; showing the plugin's ghost text",
      vim.log.levels.WARN
    )
  end
  vim.api.nvim_set_hl(0, M.config.hl_group, { link = "Comment", default = true })

  for name, command in pairs(COMMANDS) do
    vim.api.nvim_create_user_command(name, function()
      M.execute(command)
    end, { nargs = 0, desc = "rubytailor: the server's " .. command })
  end

  group = vim.api.nvim_create_augroup("rubytailor", { clear = true })
  generation = generation + 1
  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    pattern = M.config.filetypes,
    callback = function(args)
      M.start(args.buf)
    end,
  })
  -- Buffers opened before setup() ran (lazy loading).
  for _, buf in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(buf) and vim.tbl_contains(M.config.filetypes, vim.bo[buf].filetype) then
      M.start(buf)
    end
  end
end

M._ghost_namespace = ghost.ns

return M
