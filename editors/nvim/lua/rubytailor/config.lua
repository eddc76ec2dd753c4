-- Defaults for require("rubytailor").setup() and their validation.

local M = {}

---@class rubytailor.Keymaps
---@field accept string|false        accept the whole suggestion (falls back to the key itself)
---@field accept_line string|false   accept up to and including the suggestion's first newline
---@field dismiss string|false       hide the suggestion and cancel its request

---@class rubytailor.Config
---@field cmd string[]               command that starts the server (LSP over stdio)
---@field filetypes string[]
---@field root_markers string[]      files that mark a project root (else the file's directory)
---@field settings table<string, any> camelCase server settings ("rubytailor" section)
---@field ghost_text boolean         show suggestions (false: only the server runs)
---@field native_inline_completion boolean  Neovim 0.12+: show them with vim.lsp.inline_completion
---                                  (whole, once generated) instead of streaming ghost text
---@field debounce_ms integer        idle time after a keystroke before a request is sent
---@field accept_timeout_ms integer  how long accept waits for a still-streaming suggestion
---@field hl_group string
---@field keymaps rubytailor.Keymaps
M.defaults = {
  cmd = { "rubytailor", "serve" },
  filetypes = { "ruby" },
  root_markers = { "Gemfile", ".git" },
  settings = {},
  ghost_text = true,
  native_inline_completion = false,
  debounce_ms = 75,
  accept_timeout_ms = 500,
  hl_group = "RubytailorSuggestion",
  keymaps = {
    accept = "<Tab>",
    accept_line = "<M-]>",
    dismiss = "<C-]>",
  },
}

local TYPES = {
  cmd = "table",
  filetypes = "table",
  root_markers = "table",
  settings = "table",
  ghost_text = "boolean",
  native_inline_completion = "boolean",
  debounce_ms = "number",
  accept_timeout_ms = "number",
  hl_group = "string",
  keymaps = "table",
}

---@param opts table|nil
---@return rubytailor.Config
function M.resolve(opts)
  local config = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  -- Lists replace, never merge: tbl_deep_extend would mix {"rubytailor","serve"} with a
  -- user's {"/path/bin/rubytailor","serve","--verbose"} index by index.
  for _, key in ipairs({ "cmd", "filetypes", "root_markers" }) do
    if opts and opts[key] ~= nil then
      config[key] = opts[key]
    end
  end
  -- A plain check: vim.validate's table form is deprecated from Neovim 0.11 on.
  for key, kind in pairs(TYPES) do
    if type(config[key]) ~= kind then
      error(("rubytailor: setup option %q must be a %s, got %s"):format(key, kind, type(config[key])))
    end
  end
  if #config.cmd == 0 then
    error('rubytailor: setup({cmd = ...}) needs the server command, e.g. {"rubytailor", "serve"}')
  end
  return config
end

return M
